// The runtime's floor with a read and a write per chunk: a JavaScript
// worker that reads the upstream's body chunk by chunk and writes each
// chunk into an IdentityTransformStream (a stream the runtime implements
// natively), whose readable side is the response.
export default {
  async fetch(req, env, ctx) {
    const url = new URL(req.url);
    const headers = new Headers(req.headers);
    headers.delete("host");
    const up = await fetch(env.UPSTREAM + url.pathname, { method: req.method, headers, body: req.body });
    const { readable, writable } = new IdentityTransformStream();
    const pump = async () => {
      const reader = up.body.getReader();
      const writer = writable.getWriter();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        await writer.write(value);
      }
      await writer.close();
    };
    ctx.waitUntil(pump());
    return new Response(readable, { status: up.status, headers: up.headers });
  },
};

// The runtime's floor with a step per chunk: a JavaScript worker that
// passes each chunk of the upstream's body through a TransformStream.
export default {
  async fetch(req, env) {
    const url = new URL(req.url);
    const headers = new Headers(req.headers);
    headers.delete("host");
    const up = await fetch(env.UPSTREAM + url.pathname, { method: req.method, headers, body: req.body });
    const body = up.body.pipeThrough(new TransformStream({ transform: (chunk, out) => out.enqueue(chunk) }));
    return new Response(body, { status: up.status, headers: up.headers });
  },
};

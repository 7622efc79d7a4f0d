// The runtime's floor with a read and an enqueue per chunk: a JavaScript
// worker that answers with a pull-driven ReadableStream (the shape of a
// Rust stream handed to `Response::from_stream`), each pull reading one
// chunk of the upstream's body.
export default {
  async fetch(req, env) {
    const url = new URL(req.url);
    const headers = new Headers(req.headers);
    headers.delete("host");
    const up = await fetch(env.UPSTREAM + url.pathname, { method: req.method, headers, body: req.body });
    const reader = up.body.getReader();
    const body = new ReadableStream(
      {
        async pull(out) {
          const { done, value } = await reader.read();
          if (done) out.close();
          else out.enqueue(value);
        },
      },
      { highWaterMark: 0 },
    );
    return new Response(body, { status: up.status, headers: up.headers });
  },
};

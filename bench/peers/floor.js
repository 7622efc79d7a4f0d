// The runtime's floor: JavaScript workers in front of the same upstream
// (`UPSTREAM`), each doing the least a gateway of that shape can do. The
// `SHAPE` binding picks one:
//
// - `pass`: returns the upstream's body untouched (no JavaScript per chunk);
// - `transform`: each chunk through a `TransformStream`;
// - `pull`: a pull-driven `ReadableStream` (the shape of a Rust stream
//   handed to `Response::from_stream`), each pull reading one chunk;
// - `identity`: a reader writing each chunk into an `IdentityTransformStream`
//   (a stream the runtime implements natively), whose readable side is the
//   response.
export default {
  async fetch(req, env, ctx) {
    const url = new URL(req.url);
    const headers = new Headers(req.headers);
    headers.delete("host");
    const up = await fetch(env.UPSTREAM + url.pathname, { method: req.method, headers, body: req.body });
    const answer = (body) => new Response(body, { status: up.status, headers: up.headers });
    switch (env.SHAPE) {
      case "pass":
        return up;
      case "transform":
        return answer(up.body.pipeThrough(new TransformStream({ transform: (chunk, out) => out.enqueue(chunk) })));
      case "pull": {
        const reader = up.body.getReader();
        const pull = async (out) => {
          const { done, value } = await reader.read();
          if (done) out.close();
          else out.enqueue(value);
        };
        return answer(new ReadableStream({ pull }, { highWaterMark: 0 }));
      }
      case "identity": {
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
        return answer(readable);
      }
      default:
        return new Response(`unknown SHAPE ${env.SHAPE}`, { status: 500 });
    }
  },
};

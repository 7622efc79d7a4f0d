// The runtime's floor: a JavaScript worker that returns the upstream's
// body untouched.
export default {
  async fetch(req, env) {
    const url = new URL(req.url);
    const headers = new Headers(req.headers);
    headers.delete("host");
    return fetch(env.UPSTREAM + url.pathname, { method: req.method, headers, body: req.body });
  },
};

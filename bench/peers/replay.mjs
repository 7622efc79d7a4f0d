// A replay upstream for the peers benchmark: an OpenAI-compatible server
// whose every stream is the same recorded shape — the role arriving with
// the first token, then DELTAS tokens GAP_MS apart, a finish and usage, and
// `[DONE]` — so every gateway in front of it gets identical work.
//
//   node bench/peers/replay.mjs --port 28090 [--deltas 64] [--gap-ms 20]
import http from "node:http";

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const PORT = Number(arg("port", 28090));
const DELTAS = Number(arg("deltas", 64));
const GAP_MS = Number(arg("gap-ms", 20));
const WORDS = "The lighthouse keeper climbed the stairs each evening to light the lamp".split(" ");

const chunk = (delta, finish = null, extra = {}) =>
  `data: ${JSON.stringify({
    id: "chatcmpl-replay",
    object: "chat.completion.chunk",
    created: 1795566484,
    model: "replay",
    choices: [{ index: 0, delta, finish_reason: finish }],
    ...extra,
  })}\n\n`;

function stream(res) {
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  let i = 0;
  const word = () => ` ${WORDS[i % WORDS.length]}`;
  res.write(chunk({ role: "assistant", content: word() }));
  i += 1;
  const timer = setInterval(() => {
    if (i < DELTAS) {
      res.write(chunk({ content: word() }));
      i += 1;
      return;
    }
    clearInterval(timer);
    res.write(chunk({}, "stop"));
    res.write(`data: ${JSON.stringify({ id: "chatcmpl-replay", object: "chat.completion.chunk", created: 1795566484, model: "replay", choices: [], usage: { prompt_tokens: 12, completion_tokens: DELTAS, total_tokens: 12 + DELTAS } })}\n\n`);
    res.end("data: [DONE]\n\n");
  }, GAP_MS);
  res.on("close", () => clearInterval(timer));
}

http
  .createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      if (req.url.startsWith("/health")) return res.end('{"status":"ok"}');
      if (req.url.endsWith("/models")) {
        res.setHeader("content-type", "application/json");
        return res.end('{"object":"list","data":[{"id":"replay","object":"model"}]}');
      }
      if (!req.url.endsWith("/chat/completions")) return res.writeHead(404).end();
      let parsed = {};
      try {
        parsed = JSON.parse(body);
      } catch {
        return res.writeHead(400).end('{"error":{"message":"bad json"}}');
      }
      if (parsed.stream) return stream(res);
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({
        id: "chatcmpl-replay", object: "chat.completion", model: "replay",
        choices: [{ index: 0, message: { role: "assistant", content: WORDS.join(" ") }, finish_reason: "stop" }],
        usage: { prompt_tokens: 12, completion_tokens: DELTAS, total_tokens: 12 + DELTAS },
      }));
    });
  })
  .listen(PORT, "127.0.0.1");

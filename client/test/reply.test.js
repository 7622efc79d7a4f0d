// The client against a local HTTP server that replays a recorded stream
// and misbehaves on cue: a connection cut mid-event, a cancel, a refusal.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { Tokenedge, TokenedgeError } from "../tokenedge.js";

const RECORDED = readFileSync(new URL("./streams/compact-progress.sse", import.meta.url), "utf8");
const BLOCKS = RECORDED.split(/(?<=\n\n)/);
const idOf = (block) => Number((block.match(/^id: (\d+)$/m) || [])[1] ?? NaN);
const TEXT = BLOCKS.filter((b) => b.startsWith("data: ")).map((b) => JSON.parse(b.split("\n")[0].slice(6))).join("");

/** A server whose `handle(req, res, body)` the test sets; returns its
 * base URL, the requests it saw, and a close function. */
async function serve(handle) {
  const seen = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      seen.push({ method: req.method, url: req.url, headers: req.headers, body });
      handle(req, res, body, seen);
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const base = `http://127.0.0.1:${server.address().port}`;
  return { base, seen, close: () => new Promise((r) => server.close(r)) };
}

const head = { "content-type": "text/event-stream; charset=utf-8", "x-tokenedge-stream": "s1", "x-cache": "miss" };

test("a connection cut mid-event is resumed from the last whole event, once each", async () => {
  const cutAfter = 8;
  const srv = await serve((req, res) => {
    if (req.method === "POST") {
      res.writeHead(200, head);
      const upto = BLOCKS.findIndex((b) => idOf(b) === cutAfter);
      res.write(BLOCKS.slice(0, upto + 1).join(""));
      // Half of the next event, then the connection drops.
      res.write(BLOCKS[upto + 1].slice(0, 9), () => setTimeout(() => res.socket.destroy(), 20));
      return;
    }
    assert.equal(req.url, "/v1/streams/s1");
    const after = Number(req.headers["last-event-id"]);
    res.writeHead(200, head);
    res.end(BLOCKS.filter((b) => !(idOf(b) <= after) && !b.startsWith("event: status")).join(""));
  });
  const client = new Tokenedge({ baseUrl: srv.base, apiKey: "k", reconnect: { delayMs: 10 } });
  const reply = client.chat({ model: "m", messages: [{ role: "user", content: "hi" }] });
  const tokens = [];
  const statuses = [];
  const reconnects = [];
  reply.on("token", (t) => tokens.push(t.text));
  reply.on("status", (s) => statuses.push(s.phase));
  reply.on("reconnect", (r) => reconnects.push(r));
  const result = await reply.done;
  await srv.close();
  assert.equal(result.text, TEXT);
  assert.equal(tokens.join(""), TEXT, "no token twice, none lost");
  assert.equal(result.finishReason, "length");
  assert.equal(reconnects.length, 1);
  assert.equal(reconnects[0].lastEventId, String(cutAfter));
  assert.equal(srv.seen[1].headers["last-event-id"], String(cutAfter));
  assert.equal(srv.seen[1].headers.authorization, "Bearer k");
  assert.equal(srv.seen[1].headers["x-tokenedge-format"], "compact");
  assert.deepEqual(statuses.slice(-1), ["generating"]);
  assert.ok(statuses.filter((p) => p === "prefill").length >= 2);
  assert.equal(result.stats.tokens, tokens.length);
  assert.equal(result.stats.cache, "miss");
  assert.ok(result.stats.ttftMs > 0 && result.stats.durationMs >= result.stats.ttftMs);
});

test("stop asks the function to cancel, and the stream's cancelled end ends the reply", async () => {
  let stream;
  const srv = await serve((req, res) => {
    if (req.url === "/v1/chat/completions") {
      res.writeHead(200, head);
      res.write('data: "Hello"\nid: 1\n\n');
      stream = res;
      return;
    }
    assert.equal(req.url, "/v1/streams/s1/cancel");
    res.writeHead(202, { "content-type": "application/json" });
    res.end('{"object":"stream.cancel","id":"s1"}');
    stream.end('event: done\ndata: {"finish_reason":"cancelled","usage":null,"stats":{"tokens":1,"ttft_ms":1,"duration_ms":2}}\n\n');
  });
  const client = new Tokenedge({ baseUrl: srv.base });
  const reply = client.chat({ model: "m", messages: [] });
  await new Promise((r) => reply.on("token", r));
  await reply.stop();
  const result = await reply.done;
  await srv.close();
  assert.equal(result.finishReason, "cancelled");
  assert.equal(result.text, "Hello");
  assert.equal(srv.seen.filter((s) => s.url.endsWith("/cancel")).length, 1);
});

test("a refusal is an error with the API's fields", async () => {
  const srv = await serve((req, res) => {
    res.writeHead(429, { "content-type": "application/json", "retry-after": "2" });
    res.end('{"error":{"message":"Too many streams","type":"rate_limit_error","code":"too_many_streams","param":null}}');
  });
  const client = new Tokenedge({ baseUrl: srv.base });
  const reply = client.chat({ model: "m", messages: [] });
  const heard = [];
  reply.on("error", (e) => heard.push(e));
  await assert.rejects(reply.done, (e) => {
    assert.ok(e instanceof TokenedgeError);
    assert.equal(e.status, 429);
    assert.equal(e.code, "too_many_streams");
    assert.equal(e.retryable, true);
    return true;
  });
  await srv.close();
  assert.equal(heard.length, 1);
});

test("an error event mid-stream rejects with its code", async () => {
  const srv = await serve((req, res) => {
    res.writeHead(200, head);
    res.end('data: "a"\nid: 1\n\nevent: error\ndata: {"error":{"message":"broke","type":"upstream_error","code":"upstream_stream_broken"}}\n\n');
  });
  const reply = new Tokenedge({ baseUrl: srv.base }).chat({ model: "m", messages: [] });
  await assert.rejects(reply.done, (e) => e.code === "upstream_stream_broken");
  await srv.close();
  assert.equal(reply.text, "a");
});

test("a measured link is reported on the next request", async () => {
  // 256 KiB as a link of a few Mbit/s delivers it: 8 KiB every 2 ms, so
  // the reads come back to back.
  const piece = `data: ${JSON.stringify("x".repeat(1014))}\n\n`.repeat(8);
  const srv = await serve(async (req, res) => {
    res.writeHead(200, head);
    for (let i = 0; i < 32; i++) {
      res.write(piece);
      await new Promise((r) => setTimeout(r, 2));
    }
    res.end('event: done\ndata: {"finish_reason":"stop","usage":null,"stats":null}\n\n');
  });
  const client = new Tokenedge({ baseUrl: srv.base });
  await client.chat({ model: "m", messages: [] }).done;
  const measured = client.bandwidthKbps;
  await client.chat({ model: "m", messages: [] }).done;
  await srv.close();
  assert.equal(srv.seen[0].headers["x-tokenedge-bandwidth"], undefined, "nothing measured yet");
  const kbps = Number(srv.seen[1].headers["x-tokenedge-bandwidth"]);
  assert.ok(kbps > 1000, String(kbps));
  assert.equal(kbps, Math.round(measured));
});

test("prefetch waits for typing to pause, and sends a conversation once", async () => {
  const srv = await serve((req, res) => {
    res.writeHead(202, { "content-type": "application/json" });
    res.end('{"object":"prefetch","status":"accepted"}');
  });
  const client = new Tokenedge({ baseUrl: srv.base });
  const warmed = [];
  const prefetch = client.prefetcher({ delayMs: 30, onWarmed: (a) => warmed.push(a) });
  const body = (content) => ({ model: "m", messages: [{ role: "user", content }], temperature: 0 });
  for (const typed of ["W", "Wh", "Wha", "What"]) {
    prefetch(body(typed));
    await new Promise((r) => setTimeout(r, 5));
  }
  await new Promise((r) => setTimeout(r, 80));
  prefetch(body("What")); // unchanged: not sent again
  await new Promise((r) => setTimeout(r, 80));
  await srv.close();
  assert.equal(srv.seen.length, 1);
  assert.equal(srv.seen[0].url, "/v1/prefetch");
  assert.deepEqual(JSON.parse(srv.seen[0].body), { model: "m", messages: [{ role: "user", content: "What" }] });
  assert.deepEqual(warmed, [{ object: "prefetch", status: "accepted" }]);
});

/** A WebSocket that opens when the test says, records what is sent, and
 * answers a cancel with the cancelled end (as the function does). */
class SlowSocket {
  static last = null;
  constructor() {
    this.sent = [];
    SlowSocket.last = this;
  }
  open() {
    this.onopen();
  }
  send(text) {
    const message = JSON.parse(text);
    this.sent.push(message);
    if (message.type === "cancel") {
      const done = { type: "done", id: message.id, finish_reason: "cancelled" };
      setTimeout(() => this.onmessage({ data: JSON.stringify(done) }), 0);
    }
  }
  close() {}
}

test("a stop before the socket has opened cancels the request once it is sent", async () => {
  const client = new Tokenedge({ baseUrl: "http://127.0.0.1:9", transport: "websocket", WebSocket: SlowSocket });
  const reply = client.chat({ model: "m", messages: [{ role: "user", content: "hi" }] });
  await reply.stop();
  SlowSocket.last.open();
  const end = await Promise.race([reply.done, new Promise((r) => setTimeout(() => r("still running"), 500))]);
  assert.deepEqual(SlowSocket.last.sent.map((m) => m.type), ["request", "cancel"]);
  assert.equal(end.finishReason, "cancelled");
});

// The WebSocket transport, `/v1/ws`, through the real runtime in front of
// the real model, with Node's own WebSocket client and the client library:
// several requests on one socket, cancel, steer, abuse, and a socket that
// closes. On Spin (no inbound WebSockets) it answers 501 and the client
// library falls back to fetch.
//
//   TOKENEDGE_URL, TOKENEDGE_KEY, TOKENEDGE_RUNTIME, MODEL_URL
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { Tokenedge } from "../../client/tokenedge.js";

const URL = process.env.TOKENEDGE_URL;
const KEY = process.env.TOKENEDGE_KEY;
const RUNTIME = process.env.TOKENEDGE_RUNTIME || "unknown";
const MODEL_URL = process.env.MODEL_URL;
const SOCKETS = RUNTIME === "workerd";
const WS_URL = URL.replace(/^http/, "ws") + "/v1/ws";

const words = (s) => s.match(/[\p{L}\p{N}]+/gu) || [];
const chat = (content, max_tokens = 48) => ({
  model: "smollm2",
  max_tokens,
  temperature: 0,
  messages: [{ role: "user", content }],
});

/** The API's answer to the same request, not streamed. */
async function apiAnswer(body) {
  const r = await fetch(`${URL}/v1/chat/completions`, {
    method: "POST",
    headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: false }),
  });
  assert.equal(r.status, 200, await r.clone().text());
  return (await r.json()).choices[0].message.content;
}

/** Whether the model server is generating anything, polled for up to 5 s
 * until it is not. */
async function modelIdle() {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const slots = await (await fetch(`${MODEL_URL}/slots`)).json();
    const busy = slots.filter((s) => s.is_processing).length;
    if (!busy || Date.now() > deadline) return busy === 0;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A socket to `/v1/ws` with the key as a subprotocol; every message it
 * receives, parsed, in `frames`; `until(pred)` waits for one. */
async function open() {
  const ws = new WebSocket(WS_URL, ["tokenedge", `tokenedge.key.${KEY}`]);
  const frames = [];
  const waiters = new Set();
  const closed = new Promise((resolve) => ws.addEventListener("close", (e) => resolve({ code: e.code, reason: e.reason })));
  ws.addEventListener("message", (e) => {
    frames.push({ ...JSON.parse(e.data), at: performance.now() });
    for (const w of waiters) w();
  });
  await new Promise((resolve, reject) => {
    ws.addEventListener("open", resolve);
    ws.addEventListener("error", () => reject(new Error("the socket did not open")));
  });
  assert.equal(ws.protocol, "tokenedge");
  const until = (pred, ms = 60_000) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const f = frames.find(pred);
        if (f) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(f);
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`no such message in ${ms} ms: ${JSON.stringify(frames.slice(-3))}`));
      }, ms);
      waiters.add(check);
      check();
    });
  const send = (m) => ws.send(JSON.stringify(m));
  return { ws, frames, until, send, closed };
}

const text = (frames, id) =>
  frames.filter((f) => f.id === id && f.type === "token").map((f) => f.text).join("");

test("on Spin, /v1/ws answers 501 JSON and the client falls back to fetch", { skip: SOCKETS }, async () => {
  const res = await new Promise((resolve, reject) => {
    const req = http.get(`${URL}/v1/ws`, {
      headers: {
        Connection: "Upgrade",
        Upgrade: "websocket",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        Authorization: `Bearer ${KEY}`,
      },
    });
    req.on("response", (r) => {
      let body = "";
      r.on("data", (c) => (body += c)).on("end", () => resolve({ status: r.statusCode, body }));
    });
    req.on("upgrade", () => reject(new Error("upgraded")));
    req.on("error", reject);
  });
  assert.equal(res.status, 501);
  assert.equal(JSON.parse(res.body).error.code, "not_implemented");
  const client = new Tokenedge({ baseUrl: URL, apiKey: KEY, transport: "auto" });
  const reply = client.chat(chat("Name a colour.", 8));
  const done = await reply.done;
  assert.equal(reply.transport, "fetch");
  assert.ok(done.text.length > 0);
});

test("two requests stream interleaved on one socket, each equal to the API's answer", { skip: !SOCKETS }, async () => {
  const s = await open();
  const a = chat(`Describe a lighthouse in two sentences. (${Date.now()})`);
  const b = chat(`Describe a harbour in two sentences. (${Date.now()})`);
  s.send({ type: "request", id: "a", ...a });
  s.send({ type: "request", id: "b", ...b });
  const [da, db] = await Promise.all([
    s.until((f) => f.id === "a" && f.type === "done"),
    s.until((f) => f.id === "b" && f.type === "done"),
  ]);
  for (const d of [da, db]) {
    assert.ok(["stop", "length"].includes(d.finish_reason), JSON.stringify(d));
    assert.ok(d.stats.tokens > 5);
  }
  const tokens = s.frames.filter((f) => f.type === "token");
  const switches = tokens.filter((f, i) => i > 0 && f.id !== tokens[i - 1].id).length;
  assert.ok(switches >= 4, `the two streams interleaved (${switches} switches)`);
  assert.deepEqual(words(text(s.frames, "a")), words(await apiAnswer(a)));
  assert.deepEqual(words(text(s.frames, "b")), words(await apiAnswer(b)));
  s.ws.close();
  console.log(`socket (${RUNTIME}): a ${da.stats.tokens} tokens, TTFT ${da.stats.ttft_ms} ms; b ${db.stats.tokens}, ${db.stats.ttft_ms} ms; ${switches} switches`);
});

test("a cancel stops one request on the model server and leaves the other", { skip: !SOCKETS }, async () => {
  const s = await open();
  s.send({ type: "request", id: "long", ...chat(`Write a long essay about ships. (${Date.now()})`, 400) });
  s.send({ type: "request", id: "short", ...chat(`Name three fruits. (${Date.now()})`, 24) });
  await s.until(() => s.frames.filter((f) => f.id === "long" && f.type === "token").length >= 5);
  s.send({ type: "cancel", id: "long" });
  const cancelled = await s.until((f) => f.id === "long" && f.type === "done");
  assert.equal(cancelled.finish_reason, "cancelled");
  const short = await s.until((f) => f.id === "short" && f.type === "done");
  assert.ok(["stop", "length"].includes(short.finish_reason));
  const after = s.frames.filter((f) => f.id === "long" && f.at > cancelled.at);
  assert.deepEqual(after, [], "nothing for a cancelled request after its end");
  assert.ok(await modelIdle(), "the model server stopped generating");
  assert.ok(text(s.frames, "long").length > 0);
  s.ws.close();
});

test("a steer goes on with the conversation under the same id", { skip: !SOCKETS }, async () => {
  const s = await open();
  const first = chat(`Tell me a long story about a cat. (${Date.now()})`, 300);
  s.send({ type: "request", id: "c", ...first });
  await s.until(() => s.frames.filter((f) => f.id === "c" && f.type === "token").length >= 6);
  const turn = "Stop. In one short sentence: what colour is the sky?";
  s.send({ type: "steer", id: "c", message: turn });
  const steered = await s.until((f) => f.id === "c" && f.type === "done");
  assert.equal(steered.finish_reason, "steered");
  const soFar = text(s.frames.filter((f) => f.at <= steered.at), "c");
  const end = await s.until((f) => f.id === "c" && f.type === "done" && f.at > steered.at);
  assert.ok(["stop", "length"].includes(end.finish_reason), JSON.stringify(end));
  const answer = text(s.frames.filter((f) => f.at > steered.at), "c");
  const api = await apiAnswer({
    ...first,
    max_tokens: 300,
    messages: [...first.messages, { role: "assistant", content: soFar }, { role: "user", content: turn }],
  });
  assert.deepEqual(words(answer), words(api));
  assert.ok(await modelIdle());
  s.ws.close();
});

test("closing the socket cancels what runs on it", { skip: !SOCKETS }, async () => {
  const s = await open();
  s.send({ type: "request", id: "x", ...chat(`Write a long essay about rivers. (${Date.now()})`, 400) });
  await s.until(() => s.frames.filter((f) => f.id === "x" && f.type === "token").length >= 3);
  s.ws.close();
  await s.closed;
  assert.ok(await modelIdle(), "the model server stopped generating");
});

test("abuse closes the socket: 1009 for an oversized message, 1008 for a broken one", { skip: !SOCKETS }, async () => {
  const big = await open();
  big.send({ type: "request", id: "big", ...chat("x".repeat(1024 * 1024 + 4096)) });
  const tooBig = await big.closed;
  assert.equal(tooBig.code, 1009, JSON.stringify(tooBig));
  assert.match(tooBig.reason, /message larger than \d+ bytes/);
  for (const message of ["not json", '{"type":"request"}', '{"type":"dance","id":"a"}']) {
    const s = await open();
    s.send({ type: "request", id: "running", ...chat(`Write a long essay about clouds. (${Date.now()})`, 400) });
    await s.until((f) => f.id === "running" && f.type === "token");
    s.ws.send(message);
    const closed = await s.closed;
    assert.equal(closed.code, 1008, `${message}: ${JSON.stringify(closed)}`);
    assert.ok(await modelIdle(), "the running request was cancelled");
  }
  // A refused request is an error message; the socket stays open.
  const s = await open();
  s.send({ type: "request", id: "bad", model: "smollm2" });
  const error = await s.until((f) => f.id === "bad");
  assert.equal(error.type, "error");
  assert.equal(error.status, 400);
  s.send({ type: "request", id: "good", ...chat("Say hi.", 4) });
  assert.equal((await s.until((f) => f.id === "good" && f.type !== "status")).type, "token");
  s.ws.close();
  // A wrong key is refused before any socket opens.
  const wrong = new WebSocket(WS_URL, ["tokenedge", "tokenedge.key.wrong"]);
  const refused = await new Promise((resolve) => {
    wrong.addEventListener("open", () => resolve("opened"));
    wrong.addEventListener("error", () => resolve("refused"));
  });
  assert.equal(refused, "refused");
});

test("the client library streams over the socket and stops with a cancel", { skip: !SOCKETS }, async () => {
  const client = new Tokenedge({ baseUrl: URL, apiKey: KEY, transport: "auto" });
  const body = chat(`Describe a forest in two sentences. (${Date.now()})`);
  const reply = client.chat(body);
  const done = await reply.done;
  assert.equal(reply.transport, "websocket");
  assert.deepEqual(words(done.text), words(await apiAnswer(body)));
  assert.ok(done.stats.ttftMs > 0 && done.stats.tokens > 5);
  const long = client.chat(chat(`Write a long essay about mountains. (${Date.now()})`, 400));
  let n = 0;
  long.on("token", () => {
    if (++n === 5) long.stop();
  });
  const stopped = await long.done;
  assert.equal(stopped.finishReason, "cancelled");
  assert.ok(await modelIdle());
  client.close();
});

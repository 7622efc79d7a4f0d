// The decoder against streams recorded from tokenedge (test/streams/),
// fed whole, at every split point, and in random chunkings, with UTF-8
// sequences split across reads.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Decoder } from "../tokenedge.js";

const stream = (name) => readFileSync(new URL(`./streams/${name}`, import.meta.url));

/** Decodes `bytes` cut at `cuts` (byte offsets), as a reader would. */
function decode(format, bytes, cuts = []) {
  const d = new Decoder(format);
  const utf8 = new TextDecoder("utf-8");
  const events = [];
  let at = 0;
  for (const cut of [...cuts, bytes.length]) {
    events.push(...d.push(utf8.decode(bytes.subarray(at, cut), { stream: true })));
    at = cut;
  }
  events.push(...d.push(utf8.decode()));
  return { events, lastEventId: d.lastEventId };
}

const text = (events) => events.filter((e) => e.type === "token").map((e) => e.text).join("");

for (const [name, format] of [
  ["compact-progress.sse", "compact"],
  ["openai-progress.sse", "openai"],
  ["ndjson-progress.ndjson", "ndjson"],
  ["compact-unicode.sse", "compact"],
]) {
  test(`${name}: whole, every split and random chunkings agree`, () => {
    const bytes = stream(name);
    const whole = decode(format, bytes);
    assert.ok(whole.events.length > 3);
    assert.equal(whole.events.at(-1).type, "done");
    for (let cut = 0; cut <= bytes.length; cut++) {
      assert.deepEqual(decode(format, bytes, [cut]).events, whole.events, `split at ${cut}`);
    }
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let run = 0; run < 200; run++) {
      const cuts = [];
      for (let at = 0; ; ) {
        at += 1 + Math.floor(rand() * 40);
        if (at >= bytes.length) break;
        cuts.push(at);
      }
      assert.deepEqual(decode(format, bytes, cuts).events, whole.events, `chunking ${run}`);
    }
  });
}

test("the three formats of one answer carry the same text and statuses", () => {
  const c = decode("compact", stream("compact-progress.sse"));
  const o = decode("openai", stream("openai-progress.sse"));
  const n = decode("ndjson", stream("ndjson-progress.ndjson"));
  assert.ok(text(c.events).length > 0);
  assert.equal(text(o.events), text(c.events));
  assert.equal(text(n.events), text(c.events));
  for (const { events } of [c, o, n]) {
    const statuses = events.filter((e) => e.type === "status");
    assert.ok(statuses.length >= 2, "a long prompt's prefill is told");
    const firstToken = events.findIndex((e) => e.type === "token");
    assert.ok(events.slice(0, firstToken).every((e) => e.type === "status"));
    const processed = statuses.filter((s) => s.progress).map((s) => s.progress.processed);
    assert.deepEqual(processed, [...processed].sort((a, b) => a - b));
  }
  // Event ids: the last one read is the cursor a reconnect sends.
  assert.match(c.lastEventId, /^\d+$/);
  // Every format numbers the same events; `openai` also writes the finish
  // and usage chunks, which the compact formats fold into their end.
  assert.equal(c.lastEventId, n.lastEventId);
  assert.ok(Number(o.lastEventId) > Number(c.lastEventId));
  const done = c.events.at(-1);
  assert.equal(done.stats.tokens, c.events.filter((e) => e.type === "token").length);
});

test("multi-byte characters split across reads survive", () => {
  const bytes = stream("compact-unicode.sse");
  const whole = text(decode("compact", bytes).events);
  assert.ok(/[^\x00-\x7f]/.test(whole), "the recording has non-ASCII text");
  // Cut inside every multi-byte sequence.
  for (let i = 0; i < bytes.length; i++) {
    if ((bytes[i] & 0xc0) === 0x80) assert.equal(text(decode("compact", bytes, [i]).events), whole);
  }
});

test("errors, unknown events, comments and line endings", () => {
  const raw =
    ": keep-alive\r\n\r\nevent: future\r\ndata: {}\r\n\r\ndata: \"a\"\rid: 3\r\rdata: \"b\"\nid: 4\n\n" +
    'event: error\ndata: {"error":{"message":"upstream broke","code":"upstream_stream_broken"}}\n\n';
  const { events, lastEventId } = decode("compact", Buffer.from(raw));
  assert.deepEqual(
    events.map((e) => e.type),
    ["token", "token", "error"],
  );
  assert.equal(events[2].error.code, "upstream_stream_broken");
  assert.equal(lastEventId, "4");
});

test("an event cut before its blank line is not given", () => {
  const d = new Decoder("compact");
  assert.deepEqual(d.push('data: "whole"\n\ndata: "half'), [{ type: "token", text: "whole" }]);
  // A lone CR at the end may be half of a CRLF: it waits.
  const e = new Decoder("compact");
  assert.deepEqual(e.push('data: "x"\r\n\r'), []);
  assert.deepEqual(e.push("\n"), [{ type: "token", text: "x" }]);
});

test("openai: tool-call deltas, usage and the cancelled end", () => {
  const chunk = (o) => `data: ${JSON.stringify(o)}\n\n`;
  const raw =
    chunk({ choices: [{ index: 0, delta: { role: "assistant", content: "" } }] }) +
    chunk({ choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { name: "f" } }] } }] }) +
    chunk({ choices: [{ index: 0, delta: {}, finish_reason: "cancelled" }] }) +
    chunk({ choices: [], usage: { total_tokens: 5 } }) +
    "data: [DONE]\n\n";
  const { events } = decode("openai", Buffer.from(raw));
  assert.deepEqual(events.map((e) => e.type), ["delta", "done"]);
  assert.equal(events[0].delta.tool_calls[0].function.name, "f");
  assert.equal(events[1].finishReason, "cancelled");
  assert.equal(events[1].usage.total_tokens, 5);
});

// The Responses API end to end with the official OpenAI JavaScript SDK,
// unchanged (npm `openai`, OPENAI_JS), through the runtime in front of the
// real model: streamed text equals the whole answer at temperature 0, a cut
// upstream throws, a cache hit replays the same events.
//
//   TOKENEDGE_URL, TOKENEDGE_KEY, TOKENEDGE_FAULTS_URL (see test_stream.py)
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { randomUUID } from "node:crypto";

const OpenAI = createRequire(import.meta.url)(process.env.OPENAI_JS).default;
const URL = process.env.TOKENEDGE_URL;
const KEY = process.env.TOKENEDGE_KEY;
const FAULTS_URL = process.env.TOKENEDGE_FAULTS_URL;

const client = (base = URL) =>
  new OpenAI({ baseURL: `${base}/v1`, apiKey: KEY, maxRetries: 0, timeout: 120_000 });
const fresh = (topic) => `${topic} (ref ${randomUUID().slice(0, 8)})`;
const ask = (input, extra = {}) => ({ model: "smollm2", input, max_output_tokens: 24, ...extra });

async function collect(stream) {
  const events = [];
  for await (const event of stream) events.push(event);
  return events;
}

const textOf = (events) =>
  events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("");

test("streamed text equals the whole answer at temperature 0", async () => {
  const body = ask(fresh("Name three mountains."), { temperature: 0 });
  const events = await collect(await client().responses.create({ ...body, stream: true }));
  assert.equal(events[0].type, "response.created");
  assert.equal(events.at(-1).type, "response.completed");
  const text = textOf(events);
  assert.ok(text.trim().length > 0);
  assert.equal(events.at(-1).response.output[0].content[0].text, text);
  const whole = await client().responses.create(body, { headers: { "Cache-Control": "no-cache" } });
  assert.equal(whole.output_text, text);
});

test("a cut upstream throws in the SDK", async () => {
  const seen = [];
  await assert.rejects(async () => {
    const stream = await client(FAULTS_URL).responses.create({
      ...ask(fresh("cut-me: list the planets."), { max_output_tokens: 64 }),
      stream: true,
    });
    for await (const event of stream) seen.push(event.type);
  }, OpenAI.APIError);
  assert.ok(seen.includes("response.output_text.delta"), seen.join(","));
  assert.ok(!seen.includes("response.completed"));
});

test("a cache hit replays the same event sequence", async () => {
  const body = { ...ask(fresh("Name three colours."), { temperature: 0 }), stream: true };
  const first = await collect(await client().responses.create(body));
  await new Promise((r) => setTimeout(r, 500));
  const { data, response } = await client().responses.create(body).withResponse();
  assert.equal(response.headers.get("x-cache"), "hit");
  assert.deepEqual(await collect(data), first);
});

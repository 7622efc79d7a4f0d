// The link meter: only bytes that came back to back say anything about
// the link.
import { test } from "node:test";
import assert from "node:assert/strict";
import { LinkMeter } from "../tokenedge.js";

test("a stream paced by the model leaves the estimate alone", () => {
  const m = new LinkMeter();
  for (let i = 0; i < 200; i++) m.read(i * 25, 40); // a token every 25 ms
  m.finish();
  assert.equal(m.kbps, null);
});

test("a burst of queued bytes measures the link", () => {
  const m = new LinkMeter();
  // 64 KiB in 1 KiB reads, 2 ms apart: 128 ms → 4096 kbit/s.
  for (let i = 0; i <= 64; i++) m.read(1000 + i * 2, 1024);
  m.finish();
  assert.ok(Math.abs(m.kbps - (64 * 1024 * 8) / 128) < 1, String(m.kbps));
  // A later, slower link moves the estimate halfway.
  for (let i = 0; i <= 64; i++) m.read(5000 + i * 8, 1024);
  m.finish();
  assert.ok(Math.abs(m.kbps - (4096 + 1024) / 2) < 1, String(m.kbps));
});

test("a burst too small or too short says nothing", () => {
  const m = new LinkMeter();
  for (let i = 0; i <= 3; i++) m.read(i * 2, 512);
  m.finish();
  for (let i = 0; i <= 5; i++) m.read(100 + i * 1, 4096); // 5 ms
  m.finish();
  assert.equal(m.kbps, null);
});

// Where a worker on bare workerd spends its CPU: records V8's CPU profile
// through workerd's inspector (`workerd serve … -i ADDR`) while a command
// runs (usually bench/peers/load.mjs), then prints the self time per
// function, the wasm functions grouped by module path, and the share of
// garbage collection and idle time. The raw profile goes to --out, which
// Chromium's DevTools opens.
//
//   node bench/peers/profile.mjs --inspector 127.0.0.1:29300 [--out p.cpuprofile]
//     [--top 40] -- node bench/peers/load.mjs --target ... --c 32 --rounds 3
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";

const argv = process.argv.slice(2);
const dash = argv.indexOf("--");
const args = dash < 0 ? argv : argv.slice(0, dash);
const command = dash < 0 ? [] : argv.slice(dash + 1);
const one = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i < 0 ? fallback : args[i + 1];
};
const INSPECTOR = one("inspector", "127.0.0.1:29300");
const OUT = one("out", "");
const TOP = Number(one("top", 40));
// Functions whose inclusive time (themselves and what they call) to print:
// comma-separated substrings of their names.
const INCLUSIVE = one("inclusive", "").split(",").filter(Boolean);
if (!command.length) {
  console.error("usage: profile.mjs --inspector ADDR [--out FILE] -- COMMAND...");
  process.exit(2);
}

const targets = await (await fetch(`http://${INSPECTOR}/json/list`)).json();
const ws = new WebSocket(targets[0].webSocketDebuggerUrl);
await new Promise((ok, fail) => {
  ws.onopen = ok;
  ws.onerror = fail;
});
let next = 1;
const waiting = new Map();
ws.onmessage = (e) => {
  const msg = JSON.parse(e.data);
  if (msg.id && waiting.has(msg.id)) {
    waiting.get(msg.id)(msg);
    waiting.delete(msg.id);
  }
};
const call = (method, params = {}) =>
  new Promise((ok, fail) => {
    const id = next++;
    waiting.set(id, (msg) => (msg.error ? fail(new Error(`${method}: ${msg.error.message}`)) : ok(msg.result)));
    ws.send(JSON.stringify({ id, method, params }));
  });

await call("Profiler.enable");
await call("Profiler.setSamplingInterval", { interval: 100 });
await call("Profiler.start");
const code = await new Promise((ok) => {
  const child = spawn(command[0], command.slice(1), { stdio: "inherit" });
  child.on("exit", (c) => ok(c ?? 1));
});
const { profile } = await call("Profiler.stop");
ws.close();
if (OUT) writeFileSync(OUT, JSON.stringify(profile));

// Self time per node: the samples that hit it, times the mean interval.
const hits = new Map();
for (const id of profile.samples) hits.set(id, (hits.get(id) || 0) + 1);
const total = profile.samples.length;
const ms = (profile.endTime - profile.startTime) / 1000;
const perSample = ms / Math.max(total, 1);
const byName = new Map();
const byModule = new Map();
let wasm = 0;
for (const node of profile.nodes) {
  const n = hits.get(node.id) || 0;
  if (!n) continue;
  const f = node.callFrame;
  const isWasm = f.url.startsWith("wasm://") || /^\$?[a-z_]+::/.test(f.functionName);
  const name = `${f.functionName || "(anonymous)"}${isWasm ? " [wasm]" : f.url ? ` ${f.url.split("/").pop()}:${f.lineNumber + 1}` : ""}`;
  byName.set(name, (byName.get(name) || 0) + n);
  if (isWasm) {
    wasm += n;
    // A Rust symbol's crate and first module: `tokenedge::core::sse::…`.
    const path = f.functionName.replace(/^\$/, "").replace(/^</, "").split("::").slice(0, 2).join("::");
    byModule.set(path, (byModule.get(path) || 0) + n);
  }
}
const pct = (n) => `${((100 * n) / Math.max(total, 1)).toFixed(1)}%`;
const row = ([name, n]) => `${(n * perSample).toFixed(1).padStart(9)} ms ${pct(n).padStart(6)}  ${name}`;
const busy = total - (byName.get("(idle)") || 0) - (byName.get("(program)") || 0);
console.log(`\nprofile: ${ms.toFixed(0)} ms, ${total} samples; busy (not idle, not (program)) ${pct(busy)}; wasm ${pct(wasm)}`);
console.log("\nself time, top functions:");
for (const r of [...byName].sort((a, b) => b[1] - a[1]).slice(0, TOP)) console.log(row(r));
console.log("\nwasm self time by crate::module:");
for (const r of [...byModule].sort((a, b) => b[1] - a[1]).slice(0, 20)) console.log(row(r));
if (INCLUSIVE.length) {
  // Inclusive time: each sample counts once for every pattern matched by a
  // frame on its stack.
  const parent = new Map();
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  for (const n of profile.nodes) for (const c of n.children || []) parent.set(c, n.id);
  const inc = new Map(INCLUSIVE.map((p) => [p, 0]));
  for (const [id, n] of hits) {
    const seen = new Set();
    for (let at = id; at !== undefined; at = parent.get(at)) {
      const name = byId.get(at).callFrame.functionName;
      for (const p of INCLUSIVE) if (name.includes(p)) seen.add(p);
    }
    for (const p of seen) inc.set(p, inc.get(p) + n);
  }
  console.log("\ninclusive time:");
  for (const r of inc) console.log(row(r));
}
process.exit(code);

// Times `stream(1000, gzip, resume)` from the wasm build in Node's V8 (the engine
// workerd embeds): medians of many runs after a warm-up, CPU time from
// process.cpuUsage and wall time from performance.now.
import { readFileSync } from "node:fs";

const [wasmPath, runsArg] = process.argv.slice(2);
const runs = Number(runsArg || 50);
const { instance } = await WebAssembly.instantiate(readFileSync(wasmPath), {});
const { stream } = instance.exports;

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const result = {};
for (const [name, gzip, resume] of [
  ["identity", 0, 0],
  ["gzip", 1, 0],
  ["identity+resume", 0, 1],
  ["gzip+resume", 1, 1],
  ["identity+resume (fast store)", 0, 2],
  ["gzip+resume (fast store)", 1, 2],
]) {
  for (let i = 0; i < 10; i++) stream(1000, gzip, resume); // warm-up (tier-up)
  const cpu = [], wall = [];
  let wire = 0;
  for (let i = 0; i < runs; i++) {
    const c0 = process.cpuUsage(), t0 = performance.now();
    wire = stream(1000, gzip, resume);
    wall.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1000);
  }
  result[name] = { wall_ms: median(wall), cpu_ms: median(cpu), wire_bytes: wire };
}
console.log(JSON.stringify({ engine: `node ${process.version} (V8 ${process.versions.v8})`, tokens: 1000, ...result }));

// The peers benchmark's client: raw TCP sockets (no HTTP library between
// the bytes and the clock), C streams at once against each target, the
// targets interleaved round by round. Per stream: TTFT (request written →
// first content token), each gap between tokens, and the lag (how far the
// last token is behind the upstream's schedule: its arrival minus the
// first token's, minus (tokens − 1) × the replay's gap). Per target and C:
// the CPU its processes used per request (from /proc) and their RSS.
//
//   node bench/peers/load.mjs --target name=URL[@pid,pid] ... --c 1,8,32,128
//     --rounds 5 [--gap-ms 20] [--json out.json]
// A target URL may carry headers after '#': name=URL#h1:v1|h2:v2.
import net from "node:net";
import { readFileSync, writeFileSync } from "node:fs";

const args = process.argv.slice(2);
const all = (name) => args.flatMap((a, i) => (a === `--${name}` ? [args[i + 1]] : []));
const one = (name, fallback) => all(name)[0] ?? fallback;
const GAP_MS = Number(one("gap-ms", 20));
const ROUNDS = Number(one("rounds", 5));
const CS = one("c", "1,8,32").split(",").map(Number);
const TARGETS = all("target").map((spec) => {
  const [name, rest] = [spec.slice(0, spec.indexOf("=")), spec.slice(spec.indexOf("=") + 1)];
  const [urlAndPids, headerSpec = ""] = rest.split("#");
  const [url, pids = ""] = urlAndPids.split("@");
  const headers = headerSpec ? headerSpec.split("|").map((h) => [h.slice(0, h.indexOf(":")), h.slice(h.indexOf(":") + 1)]) : [];
  return { name, url: new URL(url), pids: pids ? pids.split(",").map(Number) : [], headers };
});

const BODY = JSON.stringify({
  model: "replay",
  messages: [{ role: "user", content: "Tell me about lighthouses." }],
  max_tokens: 64,
  stream: true,
});

/** CPU seconds (user + system) of a process and its threads, and its RSS
 * in KiB. */
function usage(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[11]) + Number(fields[12]);
    const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] || 0);
    return { cpu: ticks / 100, rss };
  } catch {
    return { cpu: 0, rss: 0 };
  }
}
const sum = (pids) => pids.map(usage).reduce((a, b) => ({ cpu: a.cpu + b.cpu, rss: a.rss + b.rss }), { cpu: 0, rss: 0 });

/** Decodes an HTTP/1.1 response with a chunked (or close-delimited) body,
 * handing out body text as it arrives. */
class Response {
  constructor() {
    this.head = null;
    this.buf = Buffer.alloc(0);
    this.chunked = false;
    this.left = -1; // bytes left in the current chunk; -1: reading a size line
    this.status = 0;
  }
  push(data, onBody) {
    this.buf = Buffer.concat([this.buf, data]);
    if (!this.head) {
      const end = this.buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      this.head = this.buf.subarray(0, end).toString("latin1");
      this.status = Number(this.head.split(" ")[1]);
      this.chunked = /\r\ntransfer-encoding:\s*chunked/i.test(this.head);
      this.buf = this.buf.subarray(end + 4);
    }
    if (!this.chunked) {
      if (this.buf.length) onBody(this.buf.toString("utf8"));
      this.buf = Buffer.alloc(0);
      return;
    }
    for (;;) {
      if (this.left < 0) {
        const eol = this.buf.indexOf("\r\n");
        if (eol < 0) return;
        this.left = parseInt(this.buf.subarray(0, eol).toString("latin1"), 16);
        this.buf = this.buf.subarray(eol + 2);
        if (this.left === 0) {
          this.done = true;
          return;
        }
      }
      if (this.buf.length < this.left + 2) {
        // Hand out what there is of this chunk now.
        if (this.buf.length && this.buf.length <= this.left) {
          onBody(this.buf.toString("latin1"));
          this.left -= this.buf.length;
          this.buf = Buffer.alloc(0);
        }
        return;
      }
      onBody(this.buf.subarray(0, this.left).toString("latin1"));
      this.buf = this.buf.subarray(this.left + 2);
      this.left = -1;
    }
  }
}

/** One stream: resolves with its figures, or an error string. */
function stream(target) {
  return new Promise((resolve) => {
    const { hostname, port } = target.url;
    const sock = net.connect(Number(port), hostname);
    sock.setNoDelay(true);
    const res = new Response();
    const arrivals = [];
    let text = "";
    let start = 0;
    let done = false;
    const finish = (error) => {
      if (done) return;
      done = true;
      sock.destroy();
      if (error) return resolve({ error });
      if (res.status !== 200) return resolve({ error: `status ${res.status}` });
      if (!arrivals.length) return resolve({ error: "no tokens" });
      const gaps = arrivals.slice(1).map((t, i) => t - arrivals[i]);
      const lag = arrivals.at(-1) - arrivals[0] - (arrivals.length - 1) * GAP_MS;
      resolve({ ttft: arrivals[0] - start, gaps, lag, tokens: arrivals.length });
    };
    sock.on("connect", () => {
      const extra = target.headers.map(([k, v]) => `${k}: ${v}\r\n`).join("");
      start = performance.now();
      sock.write(
        `POST ${target.url.pathname.replace(/\/$/, "")}/v1/chat/completions HTTP/1.1\r\nHost: ${hostname}:${port}\r\n` +
          `Content-Type: application/json\r\nAccept-Encoding: identity\r\n${extra}Content-Length: ${Buffer.byteLength(BODY)}\r\n` +
          `Connection: close\r\n\r\n${BODY}`,
      );
    });
    sock.on("data", (data) => {
      const t = performance.now();
      res.push(data, (body) => {
        text += body;
        let end;
        while ((end = text.indexOf("\n\n")) >= 0) {
          const event = text.slice(0, end);
          text = text.slice(end + 2);
          if (event.includes('"content":"') && !event.includes('"content":""')) arrivals.push(t);
          if (event.includes("[DONE]")) return finish();
        }
      });
      if (res.done) finish("the body ended before [DONE]");
    });
    sock.on("error", (e) => finish(e.message));
    sock.on("close", () => finish("closed before [DONE]"));
    sock.setTimeout(60_000, () => finish("timeout"));
  });
}

const pct = (xs, p) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

// Warm-up, not recorded: each target compiles and caches what it needs.
for (const target of TARGETS) await Promise.all(Array.from({ length: 4 }, () => stream(target)));

const results = [];
for (const c of CS) {
  const by = Object.fromEntries(TARGETS.map((t) => [t.name, { streams: [], errors: 0, cpu: 0, requests: 0, rss: 0 }]));
  for (let round = 0; round < ROUNDS; round++) {
    for (let i = 0; i < TARGETS.length; i++) {
      const target = TARGETS[(i + round) % TARGETS.length];
      const r = by[target.name];
      const before = sum(target.pids);
      const got = await Promise.all(Array.from({ length: c }, () => stream(target)));
      const after = sum(target.pids);
      r.cpu += after.cpu - before.cpu;
      r.rss = Math.max(r.rss, after.rss);
      r.requests += c;
      for (const g of got) (g.error ? r.errors++ : r.streams.push(g));
      await new Promise((res) => setTimeout(res, 50));
    }
  }
  for (const t of TARGETS) {
    const r = by[t.name];
    const s = r.streams;
    results.push({
      target: t.name,
      c,
      n: s.length,
      errors: r.errors,
      ttft50: pct(s.map((x) => x.ttft), 50),
      ttft99: pct(s.map((x) => x.ttft), 99),
      gap99: pct(s.flatMap((x) => x.gaps), 99),
      lag50: pct(s.map((x) => x.lag), 50),
      cpuMs: t.pids.length ? (r.cpu * 1000) / r.requests : null,
      rssMiB: t.pids.length ? r.rss / 1024 : null,
    });
  }
}

const base = (c) => results.find((r) => r.c === c && r.target === TARGETS[0].name);
const f = (x, d = 1) => (x === null || Number.isNaN(x) ? "–" : x.toFixed(d));
console.log(`\n${ROUNDS} rounds, targets interleaved; ms; "added" is against ${TARGETS[0].name} at the same C\n`);
console.log("| C | target | streams | errors | TTFT p50 | added p50 | TTFT p99 | added p99 | gap p99 | lag p50 | CPU ms/request | RSS MiB |");
console.log("|---|---|---|---|---|---|---|---|---|---|---|---|");
for (const r of results) {
  const b = base(r.c);
  console.log(
    `| ${r.c} | ${r.target} | ${r.n} | ${r.errors} | ${f(r.ttft50)} | ${f(r.ttft50 - b.ttft50)} | ${f(r.ttft99)} | ${f(r.ttft99 - b.ttft99)} | ${f(r.gap99)} | ${f(r.lag50)} | ${f(r.cpuMs)} | ${f(r.rssMiB, 0)} |`,
  );
}
const out = one("json", null);
if (out) writeFileSync(out, JSON.stringify(results, null, 1));
if (results.some((r) => r.n === 0 || r.errors > 0)) process.exitCode = 1;

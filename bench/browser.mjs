// What a user sees, in headless Chromium: time from sending a question to
// the first and the last character painted, the model server directly vs
// through tokenedge (identity and gzip, a cache hit), interleaved round by
// round; then long tasks on the demo page during a 1,000-token answer.
//
// The comparison runs in one harness page (served here, on loopback) that
// renders with the demo page's own markdown renderer and the client
// library, so only the endpoint differs; the demo page itself is measured
// too (Enter to first and last character). Started by bench/browser.sh.
//
//   node bench/browser.mjs --model URL --target name=URL ... [--rounds N]
//     [--long-tokens N] [--key KEY] [--strict]
import http from "node:http";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const args = process.argv.slice(2);
const opt = (name, all = false) => {
  const out = [];
  for (let i = 0; i < args.length; i++) if (args[i] === `--${name}`) out.push(args[i + 1]);
  return all ? out : out[0];
};
const MODEL = opt("model");
const TARGETS = opt("target", true).map((t) => t.split("=")).map(([name, url]) => ({ name, url }));
const ROUNDS = Number(opt("rounds") || 8);
const LONG_TOKENS = Number(opt("long-tokens") || 1000);
const KEY = opt("key") || null;
// --strict: exit 1 when the page had a long task (> 50 ms) or an answer failed.
const STRICT = args.includes("--strict");
const ROOT = new URL("..", import.meta.url).pathname;
const { chromium } = createRequire(import.meta.url)(process.env.PLAYWRIGHT_CORE);

// The harness: the client library and the page's renderer, nothing else.
const HARNESS = `<!doctype html><meta charset="utf-8"><div id="out"></div>
<script type="module">
import { Tokenedge } from "/tokenedge.js";
import { Progressive } from "/markdown.js";
window.ask = async ({ baseUrl, format, body, apiKey, headers }) => {
  const out = document.querySelector("#out");
  out.textContent = "";
  const view = new Progressive(out);
  const edge = new Tokenedge({ baseUrl, format, apiKey, reconnect: { attempts: 0 } });
  const painted = () => new Promise((r) => requestAnimationFrame(() => r(performance.now())));
  const t0 = performance.now();
  let first = null, last = null, pending = null;
  const reply = edge.chat(body, { headers });
  reply.on("token", () => {
    view.update(reply.text);
    if (!pending) pending = painted().then((t) => { first ??= t - t0; last = t - t0; pending = null; });
  });
  const done = await reply.done;
  view.update(reply.text);
  view.finish();
  last = (await painted()) - t0;
  first ??= last;
  return { first, last, tokens: done.stats.tokens, cache: done.stats.cache, chars: done.text.length };
};
</script>`;

const files = {
  "/": ["text/html", HARNESS],
  "/tokenedge.js": ["text/javascript", readFileSync(`${ROOT}client/tokenedge.js`)],
  "/markdown.js": ["text/javascript", readFileSync(`${ROOT}page/markdown.js`)],
};
const server = http.createServer((req, res) => {
  const f = files[req.url];
  if (!f) return res.writeHead(404).end();
  res.writeHead(200, { "content-type": f[0] }).end(f[1]);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const harnessUrl = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
/** A harness tab; `identity` asks every response unencoded. */
async function tab(identity) {
  const context = await browser.newContext();
  if (identity) await context.setExtraHTTPHeaders({ "Accept-Encoding": "identity" });
  const page = await context.newPage();
  const encodings = [];
  page.on("response", (r) => {
    if (r.url().endsWith("/v1/chat/completions")) encodings.push(r.headers()["content-encoding"] || "identity");
  });
  await page.goto(harnessUrl);
  await page.waitForFunction(() => typeof window.ask === "function");
  return { page, encodings };
}
const gzipTab = await tab(false);
const identityTab = await tab(true);

const body = (content, max_tokens = 64) => ({
  model: "smollm2",
  max_tokens,
  temperature: 0,
  messages: [{ role: "user", content }],
});
const results = {}; // row → [{first, last}]
const record = (row, r) => (results[row] ??= []).push(r);
const ask = (t, baseUrl, format, b, headers = {}) =>
  t.page.evaluate((a) => window.ask(a), { baseUrl, format, body: b, headers, apiKey: baseUrl === MODEL ? null : KEY });

for (let round = 0; round < ROUNDS; round++) {
  // Each question opens with its own nonce, so none reuses another's
  // prompt in the model server's cache; the order turns every round.
  const q = (row) => body(`(${Date.now()}-${round} ${row}) Describe a lighthouse in two sentences.`);
  const jobs = [async () => record("direct (model server)", await ask(gzipTab, MODEL, "openai", q("direct")))];
  for (const { name, url } of TARGETS) {
    jobs.push(async () => {
      const id = await ask(identityTab, url, "compact", q(`${name} identity`));
      record(`${name}: identity`, { ...id, encoding: identityTab.encodings.at(-1) });
    });
    jobs.push(async () => {
      const b = q(`${name} gzip`);
      const gz = await ask(gzipTab, url, "compact", b);
      record(`${name}: gzip`, { ...gz, encoding: gzipTab.encodings.at(-1) });
      const hit = await ask(gzipTab, url, "compact", b);
      if (hit.cache === "hit") record(`${name}: cache hit`, { ...hit, encoding: gzipTab.encodings.at(-1) });
    });
    jobs.push(async () => {
      // Sampled, so not exact-cacheable: the second asking starts with
      // the first's stored opening.
      const b = { ...q(`${name} prefix`), temperature: 0.7 };
      const on = { "X-Tokenedge-Prefix": "on" };
      const miss = await ask(gzipTab, url, "compact", b, on);
      record(`${name}: sampled, miss`, { ...miss, encoding: gzipTab.encodings.at(-1) });
      const hit = await ask(gzipTab, url, "compact", b, on);
      if (hit.cache === "prefix") record(`${name}: prefix hit`, { ...hit, encoding: gzipTab.encodings.at(-1) });
    });
  }
  for (let i = 0; i < jobs.length; i++) await jobs[(i + round) % jobs.length]();
}

// The demo page: Enter to first and last character, and long tasks during
// a long answer.
const pageRows = [];
for (const { name, url } of TARGETS) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${url}/`);
  await page.click("#settings summary");
  if (KEY) {
    await page.fill("#key", KEY);
    await page.dispatchEvent("#key", "change");
  }
  await page.fill("#max-tokens", String(LONG_TOKENS));
  await page.dispatchEvent("#max-tokens", "change");
  await page.fill("#temperature", "0");
  await page.dispatchEvent("#temperature", "change");
  await page.evaluate(() => {
    const w = (window.__bench = { longTasks: [], first: null, last: null, enter: null });
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) w.longTasks.push(e.duration);
    }).observe({ type: "longtask" });
    document.querySelector("#prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter") w.enter = performance.now();
    });
    new MutationObserver(() => {
      const a = [...document.querySelectorAll(".msg.assistant .answer")].at(-1);
      if (a && a.textContent) {
        requestAnimationFrame(() => {
          const t = performance.now();
          w.first ??= t;
          w.last = t;
        });
      }
    }).observe(document.querySelector("#conversation"), { childList: true, characterData: true, subtree: true });
  });
  await page.fill("#prompt", `Write a very long, detailed essay about the history of lighthouses, with many sections. (${Date.now()})`);
  await page.press("#prompt", "Enter");
  await page.waitForFunction(() => {
    const m = [...document.querySelectorAll(".msg.assistant")].at(-1);
    return m && ["done", "stopped", "error"].includes(m.dataset.state);
  }, null, { timeout: 600_000 });
  await page.waitForTimeout(300);
  const w = await page.evaluate(() => ({
    ...window.__bench,
    tokens: document.querySelector('[data-stat="tokens"]').textContent,
    state: [...document.querySelectorAll(".msg.assistant")].at(-1).dataset.state,
  }));
  pageRows.push({
    name,
    tokens: w.tokens,
    state: w.state,
    first: w.first - w.enter,
    last: w.last - w.enter,
    longTasks: w.longTasks.filter((d) => d > 50).length,
    longest: Math.max(0, ...w.longTasks),
  });
  await context.close();
}
await browser.close();
server.close();

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const direct = results["direct (model server)"];
console.log(`\n${ROUNDS} rounds, interleaved; 64-token answers at temperature 0; medians in ms from the call to the paint\n`);
console.log("| row | n | first char | last char | first − direct | encoding |");
console.log("|---|---|---|---|---|---|");
for (const [row, rs] of Object.entries(results)) {
  const first = median(rs.map((r) => r.first));
  const last = median(rs.map((r) => r.last));
  const added = row.startsWith("direct") ? "–" : `${(first - median(direct.map((r) => r.first))).toFixed(1)}`;
  const enc = [...new Set(rs.map((r) => r.encoding || "identity"))].join(", ");
  console.log(`| ${row} | ${rs.length} | ${first.toFixed(1)} | ${last.toFixed(1)} | ${added} | ${enc} |`);
}
console.log(`\nThe demo page, one ${LONG_TOKENS}-token request each (Enter to paint):\n`);
console.log("| target | tokens | first char | last char | long tasks > 50 ms | longest task |");
console.log("|---|---|---|---|---|---|");
for (const r of pageRows) {
  console.log(`| ${r.name} | ${r.tokens} (${r.state}) | ${r.first.toFixed(0)} | ${r.last.toFixed(0)} | ${r.longTasks} | ${r.longest ? r.longest.toFixed(0) : "none"} |`);
}

const bad = pageRows.filter((r) => r.longTasks > 0 || r.state !== "done");
if (bad.length) {
  console.log(`\n${bad.length} page run(s) with long tasks or without a clean end: ${bad.map((r) => r.name).join(", ")}`);
  if (STRICT) process.exitCode = 1;
}

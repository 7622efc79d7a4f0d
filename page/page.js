// The demo page: a conversation through the client library, with the
// stream's stages, a stop button, prefetch while typing, and live figures
// (time to first token, tokens/s, bytes on the wire and decoded, how the
// answer was served, and when each token arrived).
import { Tokenedge } from "/tokenedge.js";
import { Progressive } from "/markdown.js";

const $ = (sel) => document.querySelector(sel);
const stat = (name) => document.querySelector(`[data-stat="${name}"]`);
const settings = ["key", "model", "max-tokens", "temperature", "format", "transport"];
const COLORS = { miss: "#c2410c", prefix: "#1d4ed8", hit: "#15803d" };

for (const id of settings) {
  const el = $(`#${id}`);
  const saved = localStorage.getItem(`tokenedge.${id}`);
  if (saved !== null) el.value = saved;
  el.addEventListener("change", () => localStorage.setItem(`tokenedge.${id}`, el.value));
}

let messages = [];
let reply = null;
let series = []; // the last few answers' arrivals, for the chart

const client = () =>
  new Tokenedge({ baseUrl: "", apiKey: $("#key").value || null, format: $("#format").value, transport: $("#transport").value });
let edge = client();
for (const id of ["key", "format", "transport"]) $(`#${id}`).addEventListener("change", () => (edge = client()));

function request(content) {
  return {
    model: $("#model").value,
    messages: [...messages, { role: "user", content }],
    max_tokens: Number($("#max-tokens").value) || 256,
    temperature: Number($("#temperature").value),
  };
}

// Prefetch while typing: the model reads the conversation before Enter.
const warmed = $("#warmed");
let prefetch = edge.prefetcher({ delayMs: 400, onWarmed: () => (warmed.hidden = false) });
$("#prompt").addEventListener("input", (e) => {
  warmed.hidden = true;
  if (e.target.value.trim().length >= 8) prefetch(request(e.target.value));
});
$("#key").addEventListener("change", () => {
  prefetch = edge.prefetcher({ delayMs: 400, onWarmed: () => (warmed.hidden = false) });
});

$("#prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("#ask").requestSubmit();
  }
});

$("#clear").addEventListener("click", () => {
  messages = [];
  $("#conversation").replaceChildren();
});

$("#stop").addEventListener("click", () => reply && reply.stop());

$("#ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const content = $("#prompt").value.trim();
  if (!content || reply) return;
  $("#prompt").value = "";
  warmed.hidden = true;
  ask(content);
});

function bubble(role) {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  $("#conversation").appendChild(el);
  return el;
}

function ask(content) {
  bubble("user").textContent = content;
  const body = request(content);
  const msg = bubble("assistant");
  msg.dataset.state = "waiting";
  // A skeleton until the function says what is happening.
  const skeleton = document.createElement("div");
  skeleton.className = "skeleton";
  skeleton.append(...[0, 1, 2].map(() => document.createElement("div")));
  const statusLine = document.createElement("div");
  statusLine.className = "status-line";
  statusLine.hidden = true;
  const bar = document.createElement("div");
  bar.className = "progress";
  bar.appendChild(document.createElement("div"));
  bar.hidden = true;
  const answer = document.createElement("div");
  answer.className = "answer";
  msg.append(skeleton, statusLine, bar, answer);
  const view = new Progressive(answer);
  const points = { color: COLORS.miss, t: [] };
  series = [...series.slice(-3), points];
  resetPanel();

  reply = edge.chat(body);
  $("#send").disabled = true;
  $("#stop").disabled = false;
  reply.on("open", ({ cache }) => {
    stat("cache").textContent = cache || "–";
    points.color = COLORS[cache] || COLORS.miss;
  });
  reply.on("status", (s) => {
    stat("status").textContent = s.phase;
    if (s.phase === "generating") return;
    skeleton.remove();
    statusLine.hidden = false;
    statusLine.textContent = describe(s);
    if (s.progress) {
      bar.hidden = false;
      bar.firstChild.style.width = `${Math.round((100 * s.progress.processed) / Math.max(1, s.progress.total))}%`;
    }
  });
  reply.on("reconnect", ({ attempt }) => {
    stat("status").textContent = `reconnecting (${attempt})`;
  });
  reply.on("resumed", () => {
    stat("status").textContent = "resumed";
  });
  reply.on("token", ({ t }) => {
    if (msg.dataset.state !== "streaming") {
      skeleton.remove();
      statusLine.remove();
      bar.remove();
      msg.dataset.state = "streaming";
    }
    view.update(reply.text);
    points.t.push(t);
    scrollDown();
  });
  reply.on("stats", (s) => {
    stat("ttft").textContent = s.ttftMs === null ? "–" : Math.round(s.ttftMs);
    stat("tokens").textContent = s.tokens;
    stat("rate").textContent = s.tokensPerSec === null ? "–" : s.tokensPerSec.toFixed(1);
    stat("decoded").textContent = s.decodedBytes;
    if (s.server) {
      stat("server-ttft").textContent = s.server.ttft_ms;
      stat("server-tokens").textContent = s.server.tokens;
    }
    drawChart();
  });
  reply.done
    .then((result) => {
      view.finish();
      const stopped = result.finishReason === "cancelled";
      msg.dataset.state = stopped ? "stopped" : "done";
      msg.dataset.finish = result.finishReason || "";
      skeleton.remove();
      statusLine.remove();
      bar.remove();
      if (stopped) note(msg, "stopped");
      const s = result.stats;
      stat("status").textContent = stopped ? "stopped" : "done";
      stat("wire").textContent = s.wireBytes ?? "–";
      stat("ratio").textContent = s.wireBytes ? `${(s.decodedBytes / s.wireBytes).toFixed(2)}×` : "–";
      messages = [...body.messages, { role: "assistant", content: result.text }];
    })
    .catch((err) => {
      view.finish();
      msg.dataset.state = "error";
      skeleton.remove();
      statusLine.remove();
      bar.remove();
      note(msg, `error: ${err.message}`);
      stat("status").textContent = "error";
    })
    .finally(() => {
      reply = null;
      $("#send").disabled = false;
      $("#stop").disabled = true;
      drawChart();
    });
}

function describe(s) {
  const secs = (s.elapsed_ms / 1000).toFixed(1);
  if (s.phase === "waiting") return `Waiting for the model… ${secs} s`;
  if (s.progress) {
    const pct = Math.round((100 * s.progress.processed) / Math.max(1, s.progress.total));
    const cached = s.progress.cached ? ` (${s.progress.cached} already cached)` : "";
    return `Reading your ${s.progress.total}-token prompt${cached}… ${pct} %`;
  }
  return `Reading your prompt… ${secs} s`;
}

function note(msg, text) {
  const el = document.createElement("div");
  el.className = "note";
  el.textContent = text;
  msg.appendChild(el);
}

function resetPanel() {
  for (const name of ["ttft", "tokens", "rate", "wire", "decoded", "ratio", "cache", "server-ttft", "server-tokens"]) stat(name).textContent = "–";
  stat("status").textContent = "sent";
}

function scrollDown() {
  const c = $("#conversation");
  if (c.scrollHeight - c.scrollTop - c.clientHeight < 80) c.scrollTop = c.scrollHeight;
}

// The chart is redrawn at most once a frame.
let frame = 0;
function drawChart() {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    const canvas = $("#chart");
    const ctx = canvas.getContext("2d");
    const { width: w, height: h } = canvas;
    ctx.clearRect(0, 0, w, h);
    const tMax = Math.max(1000, ...series.flatMap((s) => s.t));
    const nMax = Math.max(10, ...series.map((s) => s.t.length));
    ctx.strokeStyle = "#e2e2dc";
    ctx.strokeRect(24, 4, w - 28, h - 24);
    ctx.fillStyle = "#6b6b66";
    ctx.font = "10px system-ui";
    ctx.fillText(`${(tMax / 1000).toFixed(1)} s`, w - 36, h - 6);
    ctx.fillText(String(nMax), 2, 12);
    series.forEach((s, i) => {
      ctx.fillStyle = s.color;
      ctx.globalAlpha = i === series.length - 1 ? 1 : 0.35;
      s.t.forEach((t, n) => ctx.fillRect(24 + (t / tMax) * (w - 30), h - 22 - (n / nMax) * (h - 28), 2, 2));
    });
    ctx.globalAlpha = 1;
  });
}

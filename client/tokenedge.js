// tokenedge client: chat streams from a tokenedge edge function, read
// incrementally, with status events, stats, a measured link, prefetch while
// the user types, a stop that stops the model, and reconnection after a
// network drop. Plain ES module; runs in browsers, Node ≥ 18 and React
// Native with a streaming fetch (see README.md).

/** The stream decoder: text in, parsed events out. SSE for `compact` and
 * `openai`, one JSON object per line for `ndjson`. Events are only given
 * whole, so a connection cut mid-event leaves nothing half-read. */
export class Decoder {
  constructor(format = "compact") {
    this.format = format;
    this.buf = "";
    this.fields = null;
    this.lastEventId = null;
    this.finish = null;
    this.usage = null;
  }

  /** Decoded text in; library events out: {type: "status"|"token"|"delta"|
   * "done"|"error", ...}. */
  push(text) {
    this.buf += text;
    const out = [];
    for (;;) {
      const m = /\r\n|\n|\r/.exec(this.buf);
      // A lone CR at the very end may be the first half of CRLF.
      if (!m || (m[0] === "\r" && m.index === this.buf.length - 1)) break;
      const line = this.buf.slice(0, m.index);
      this.buf = this.buf.slice(m.index + m[0].length);
      if (this.format === "ndjson") {
        if (line.trim()) this.#ndjson(JSON.parse(line), out);
      } else {
        this.#sseLine(line, out);
      }
    }
    return out;
  }

  #sseLine(line, out) {
    if (line === "") {
      const f = this.fields;
      this.fields = null;
      if (f && f.data !== undefined) this.#sseEvent(f.event || "", f.data, out);
      return;
    }
    if (line.startsWith(":")) {
      const status = line.match(/^: status (\{.*\})$/);
      if (status) out.push({ type: "status", ...JSON.parse(status[1]) });
      return;
    }
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    this.fields ??= {};
    if (name === "data") this.fields.data = this.fields.data === undefined ? value : `${this.fields.data}\n${value}`;
    else if (name === "event") this.fields.event = value;
    else if (name === "id" && !value.includes("\0")) this.lastEventId = value;
  }

  #sseEvent(name, data, out) {
    if (this.format === "openai") return this.#openai(data, out);
    const value = JSON.parse(data);
    switch (name) {
      case "":
        out.push({ type: "token", text: value });
        break;
      case "status":
        out.push({ type: "status", ...value });
        break;
      case "delta":
        out.push({ type: "delta", delta: value });
        break;
      case "done":
        out.push({ type: "done", finishReason: value.finish_reason, usage: value.usage, stats: value.stats });
        break;
      case "error":
        out.push({ type: "error", error: value.error || value });
        break;
      default:
        break; // an event this version does not know: skipped
    }
  }

  #openai(data, out) {
    if (data === "[DONE]") {
      out.push({ type: "done", finishReason: this.finish, usage: this.usage, stats: null });
      return;
    }
    const chunk = JSON.parse(data);
    if (chunk.error) {
      out.push({ type: "error", error: chunk.error });
      return;
    }
    if (chunk.usage) this.usage = chunk.usage;
    const choice = chunk.choices && chunk.choices[0];
    if (!choice) return;
    const delta = choice.delta || {};
    const text = typeof choice.text === "string" ? choice.text : delta.content;
    if (text) out.push({ type: "token", text });
    const { role, content, ...rest } = delta;
    if (Object.keys(rest).length) out.push({ type: "delta", delta: rest });
    if (choice.finish_reason) {
      this.finish = choice.finish_reason;
      // A cancelled stream says so in its last chunk, then [DONE].
    }
  }

  #ndjson(obj, out) {
    if (obj.id !== undefined) this.lastEventId = String(obj.id);
    if (typeof obj.t === "string") out.push({ type: "token", text: obj.t });
    else if (obj.status) out.push({ type: "status", ...obj.status });
    else if (obj.delta) out.push({ type: "delta", delta: obj.delta });
    else if (obj.error) out.push({ type: "error", error: obj.error });
    else if ("stats" in obj) out.push({ type: "done", finishReason: obj.finish_reason, usage: obj.usage, stats: obj.stats });
  }
}

/** An error the function (or the network) gave, with the API's fields. */
export class TokenedgeError extends Error {
  constructor(message, { status = 0, type = null, code = null, param = null, retryable = false } = {}) {
    super(message);
    this.name = "TokenedgeError";
    this.status = status;
    this.type = type;
    this.code = code;
    this.param = param;
    this.retryable = retryable;
  }

  static from(status, body) {
    const e = (body && body.error) || {};
    return new TokenedgeError(e.message || `HTTP ${status}`, {
      status,
      type: e.type ?? null,
      code: e.code ?? null,
      param: e.param ?? null,
      retryable: status === 429 || status >= 500,
    });
  }
}

/** The link's downlink in kbit/s, from bursts of bytes that arrived back
 * to back (the data was queued: the link, not the model, set the pace).
 * A stream paced by the model says nothing about the link and leaves the
 * estimate as it was. */
export class LinkMeter {
  static BURST_GAP_MS = 10;
  static MIN_BURST_BYTES = 4096;
  static MIN_BURST_MS = 20;

  constructor() {
    this.kbps = null;
    this.reset();
  }

  reset() {
    this.burst = null; // {start, last, bytes}
    this.best = null;
  }

  /** `bytes` arrived at `t` (ms). */
  read(t, bytes) {
    const b = this.burst;
    if (b && t - b.last <= LinkMeter.BURST_GAP_MS) {
      b.bytes += bytes;
      b.last = t;
    } else {
      this.#close();
      // The first read of a burst only says when it began.
      this.burst = { start: t, last: t, bytes: 0 };
    }
  }

  #close() {
    const b = this.burst;
    if (b && b.bytes >= LinkMeter.MIN_BURST_BYTES && b.last - b.start >= LinkMeter.MIN_BURST_MS) {
      const kbps = (b.bytes * 8) / (b.last - b.start);
      this.best = Math.max(this.best ?? 0, kbps);
    }
    this.burst = null;
  }

  /** The response ended: folds its best burst into the estimate. */
  finish() {
    this.#close();
    if (this.best !== null) {
      this.kbps = this.kbps === null ? this.best : 0.5 * this.kbps + 0.5 * this.best;
    }
    this.best = null;
  }
}

const now = () => (globalThis.performance ? globalThis.performance.now() : Date.now());

/** A tiny event emitter (no dependency on EventTarget, absent in React
 * Native). */
class Emitter {
  constructor() {
    this.handlers = {};
  }
  on(name, fn) {
    (this.handlers[name] ??= []).push(fn);
    return this;
  }
  off(name, fn) {
    this.handlers[name] = (this.handlers[name] || []).filter((h) => h !== fn);
    return this;
  }
  emit(name, value) {
    for (const fn of this.handlers[name] || []) fn(value);
  }
}

/** One chat request's reply: events as they arrive, `done` when it ends. */
export class Reply extends Emitter {
  constructor(client, body, options) {
    super();
    this.client = client;
    this.options = options;
    this.body = body;
    this.format = options.format || client.format;
    this.id = null;
    this.text = "";
    this.stopped = false;
    this.reconnects = 0;
    this.controller = new AbortController();
    this.stats = {
      ttftMs: null,
      tokens: 0,
      durationMs: null,
      tokensPerSec: null,
      decodedBytes: 0,
      wireBytes: null,
      cache: null,
      server: null,
    };
    this.tokenTimes = [];
    this.decoder = new Decoder(this.format);
    this.transport = "fetch";
    this.done = this.#start();
    // Handled here so an unobserved failure is not an unhandled rejection;
    // `done` still rejects for whoever awaits it.
    this.done.catch(() => {});
  }

  /** Stops the generation: the function cancels the upstream and the
   * stream ends with `finishReason: "cancelled"`. */
  async stop() {
    if (this.stopped) return;
    this.stopped = true;
    if (this.socket) {
      // The socket cancels it and answers with the cancelled end.
      this.socket.send({ type: "cancel", id: this.id });
      return;
    }
    if (this.id) {
      try {
        await this.client.post(`/v1/streams/${this.id}/cancel`, {});
        // The cancelled end follows on the stream; cut it if it does not.
        setTimeout(() => this.controller.abort(), 3000);
        return;
      } catch {
        // No cancel endpoint reachable: leaving cancels too (RESUME=off).
      }
    }
    this.controller.abort();
  }

  /** Over a WebSocket only: stops the generation and goes on with the
   * conversation — the text so far as the assistant's turn, then
   * `message` — under the same reply (a `steered` event marks the turn). */
  steer(message) {
    if (!this.socket) throw new TokenedgeError("steer needs the websocket transport", { code: "not_supported" });
    this.socket.send({ type: "steer", id: this.id, message });
  }

  async #start() {
    let socket;
    try {
      socket = await this.client.socketFor(this.options);
    } catch (e) {
      return this.#fail(e);
    }
    if (!socket) return this.#run();
    this.transport = "websocket";
    return this.#runSocket(socket);
  }

  /** The request over the client's socket: its messages as events. */
  #runSocket(socket) {
    this.started = now();
    this.socket = socket;
    this.id = socket.nextId();
    return new Promise((resolve, reject) => {
      socket.calls.set(this.id, (frame) => {
        const size = frame.raw.length;
        this.stats.decodedBytes += size;
        this.stats.wireBytes = (this.stats.wireBytes || 0) + size;
        let event;
        switch (frame.type) {
          case "token":
            event = { type: "token", text: frame.text };
            break;
          case "status": {
            const { type, id, raw, ...status } = frame;
            event = { type: "status", ...status };
            break;
          }
          case "delta":
            event = { type: "delta", delta: frame.delta };
            break;
          case "done":
            if (frame.finish_reason === "steered") {
              this.emit("steered", { text: this.text });
              return;
            }
            event = { type: "done", finishReason: frame.finish_reason, usage: frame.usage ?? null, stats: frame.stats ?? null };
            break;
          case "error":
            socket.calls.delete(this.id);
            reject(this.#failed(TokenedgeError.from(frame.status || 502, { error: frame.error })));
            return;
          case "closed":
            socket.calls.delete(this.id);
            reject(this.#failed(new TokenedgeError(`the socket closed: ${frame.reason || frame.code}`, { retryable: true })));
            return;
          default:
            return;
        }
        if (this.#handle([event])) {
          socket.calls.delete(this.id);
          this.#finish(null).then(resolve, reject);
        }
      });
      this.emit("open", { id: this.id, cache: null, status: 101, transport: "websocket" });
      socket.send({ type: "request", id: this.id, ...this.body });
      // Stopped while the socket was opening: the cancel had no id then.
      if (this.stopped) socket.send({ type: "cancel", id: this.id });
    });
  }

  async #run() {
    const started = now();
    this.started = started;
    const url = `${this.client.baseUrl}/v1/chat/completions`;
    let res;
    try {
      res = await this.client.fetch(url, {
        method: "POST",
        headers: this.client.headers({ ...this.options.headers, "Content-Type": "application/json", "X-Tokenedge-Format": this.format }),
        body: JSON.stringify({ ...this.body, stream: true }),
        signal: this.controller.signal,
      });
    } catch (e) {
      return this.#fail(new TokenedgeError(`network: ${e.message}`, { retryable: true }));
    }
    if (!res.ok) return this.#fail(TokenedgeError.from(res.status, await res.json().catch(() => null)));
    this.id = res.headers.get("x-tokenedge-stream");
    this.stats.cache = res.headers.get("x-cache");
    this.serverTiming = res.headers.get("server-timing");
    this.emit("open", { id: this.id, cache: this.stats.cache, status: res.status });
    for (;;) {
      let ended;
      try {
        ended = await this.#read(res);
      } catch (e) {
        if (e instanceof TokenedgeError) return this.#fail(e);
        ended = false;
      }
      if (ended) return await this.#finish(url);
      if (this.stopped) return await this.#finish(url, "cancelled");
      res = await this.#reconnect();
      if (!res) return this.#fail(new TokenedgeError("the stream was cut and could not be resumed", { retryable: true }));
    }
  }

  /** Reads one response to its end; true when the stream ended (its end
   * event, or an error event), false when the connection was cut. */
  async #read(res) {
    const meter = this.client.meter;
    if (!res.body || !res.body.getReader) {
      // A fetch without streaming (React Native's own): all at once.
      const text = await res.text();
      meter.read(now(), text.length);
      return this.#handle(this.decoder.push(text));
    }
    const reader = res.body.getReader();
    const utf8 = new TextDecoder("utf-8");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        meter.finish();
        const tail = utf8.decode();
        if (tail && this.#handle(this.decoder.push(tail))) return true;
        return false;
      }
      meter.read(now(), value.byteLength);
      this.stats.decodedBytes += value.byteLength;
      if (this.#handle(this.decoder.push(utf8.decode(value, { stream: true })))) {
        meter.finish();
        // The body closes right after its end event; read it to its end so
        // the platform's figures for it (resource timing) are complete.
        const rest = setTimeout(() => reader.cancel().catch(() => {}), 1000);
        try {
          while (!(await reader.read()).done);
        } catch {
          // cut after the end: nothing was lost
        }
        clearTimeout(rest);
        return true;
      }
    }
  }

  /** Dispatches events; true at the stream's end. */
  #handle(events) {
    for (const ev of events) {
      switch (ev.type) {
        case "status":
          this.emit("status", ev);
          break;
        case "token": {
          const t = now() - this.started;
          if (this.stats.ttftMs === null) {
            this.stats.ttftMs = t;
            this.emit("status", { phase: "generating", elapsed_ms: Math.round(t) });
          }
          this.text += ev.text;
          this.stats.tokens += 1;
          this.tokenTimes.push(t);
          this.#rate(t);
          this.emit("token", { text: ev.text, index: this.stats.tokens - 1, t });
          this.emit("stats", this.stats);
          break;
        }
        case "delta":
          this.emit("delta", ev.delta);
          break;
        case "error":
          throw TokenedgeError.from(ev.error.code === "stream_not_found" ? 404 : 502, { error: ev.error });
        case "done":
          this.finishReason = ev.finishReason;
          this.usage = ev.usage;
          this.stats.server = ev.stats;
          return true;
      }
    }
    return false;
  }

  #rate(t) {
    const first = this.stats.ttftMs;
    const n = this.stats.tokens - 1;
    if (n > 0 && t > first) this.stats.tokensPerSec = (n * 1000) / (t - first);
  }

  async #reconnect() {
    const { attempts, delayMs } = this.client.reconnect;
    const id = this.decoder.lastEventId;
    if (!this.id || this.format === "text") return null;
    while (this.reconnects < attempts) {
      this.reconnects += 1;
      await new Promise((r) => setTimeout(r, delayMs * 2 ** (this.reconnects - 1)));
      this.emit("reconnect", { attempt: this.reconnects, lastEventId: id });
      try {
        const headers = { "X-Tokenedge-Format": this.format };
        if (this.decoder.lastEventId !== null) headers["Last-Event-ID"] = this.decoder.lastEventId;
        const res = await this.client.fetch(`${this.client.baseUrl}/v1/streams/${this.id}`, {
          headers: this.client.headers(headers),
          signal: this.controller.signal,
        });
        if (res.ok) {
          this.emit("resumed", { attempt: this.reconnects, lastEventId: id });
          // Whatever was half-read is read again, whole.
          const lastEventId = this.decoder.lastEventId;
          this.decoder = new Decoder(this.format);
          this.decoder.lastEventId = lastEventId;
          return res;
        }
        if (res.status === 404 || res.status === 400) return null;
      } catch {
        // still offline
      }
    }
    return null;
  }

  async #finish(url, reason) {
    const s = this.stats;
    s.durationMs = now() - this.started;
    // The resource timing entry is added just after the body ends.
    for (let i = 0; url && i < 10 && (s.wireBytes = wireBytes(url, this.started)) === null && globalThis.document; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    if (reason) this.finishReason = reason;
    this.emit("stats", s);
    const result = { text: this.text, finishReason: this.finishReason ?? null, usage: this.usage ?? null, stats: s, id: this.id };
    this.emit("done", result);
    return result;
  }

  #fail(error) {
    throw this.#failed(error);
  }

  #failed(error) {
    this.emit("error", error);
    return error;
  }
}

/** Compressed bytes of the latest response from `url` started after
 * `since`, where the platform's resource timing tells (browsers;
 * cross-origin only with `Timing-Allow-Origin`). */
function wireBytes(url, since) {
  const perf = globalThis.performance;
  if (!perf || !perf.getEntriesByName) return null;
  const abs = new URL(url, globalThis.location ? globalThis.location.href : undefined).href;
  const entries = perf.getEntriesByName(abs).filter((e) => e.startTime >= since - 1);
  const e = entries[entries.length - 1];
  return e && e.encodedBodySize ? e.encodedBodySize : null;
}

/** One WebSocket to `/v1/ws` (Workers), shared by a client's replies:
 * each request under an id of its own. */
class Socket {
  constructor(url, protocols, WS) {
    this.calls = new Map();
    this.count = 0;
    this.ws = new WS(url, protocols);
    this.opened = new Promise((resolve, reject) => {
      this.ws.onopen = () => resolve(this);
      this.ws.onerror = () => reject(new TokenedgeError("the websocket could not be opened", { retryable: true }));
      this.ws.onclose = (e) => {
        reject(new TokenedgeError(`the websocket closed: ${e.code}`, { retryable: true }));
        this.closed = true;
        for (const deliver of [...this.calls.values()]) deliver({ type: "closed", code: e.code, reason: e.reason, raw: "" });
        this.calls.clear();
      };
    });
    this.ws.onmessage = (e) => {
      if (typeof e.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return;
      }
      frame.raw = e.data;
      const deliver = this.calls.get(frame.id);
      if (deliver) deliver(frame);
    };
  }

  nextId() {
    this.count += 1;
    return `r${this.count}`;
  }

  send(message) {
    this.ws.send(JSON.stringify(message));
  }

  close() {
    this.ws.close(1000, "done");
  }
}

/** A client of one tokenedge deployment. */
export class Tokenedge {
  /** `transport`: `fetch` (the default; resumes after a network drop),
   * `websocket` (one socket for every request, with `steer`; Workers
   * only), or `auto` (the socket where the deployment has one, else
   * fetch). */
  constructor({ baseUrl = "", apiKey = null, format = "compact", fetch: f, reconnect = {}, transport = "fetch", WebSocket: WS } = {}) {
    this.transport = transport;
    this.WebSocket = WS || globalThis.WebSocket;
    this.socket = null;
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.apiKey = apiKey;
    this.format = format;
    const impl = f || globalThis.fetch;
    this.fetch = (...args) => impl(...args);
    this.reconnect = { attempts: 6, delayMs: 250, ...reconnect };
    this.meter = new LinkMeter();
  }

  /** The downlink measured so far (kbit/s), sent with the next request. */
  get bandwidthKbps() {
    return this.meter.kbps;
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.apiKey) h.Authorization = `Bearer ${this.apiKey}`;
    if (this.meter.kbps) h["X-Tokenedge-Bandwidth"] = String(Math.round(this.meter.kbps));
    return h;
  }

  async post(path, body) {
    const res = await this.fetch(`${this.baseUrl}${path}`, {
      method: "POST",
      headers: this.headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    });
    const json = await res.json().catch(() => null);
    if (!res.ok) throw TokenedgeError.from(res.status, json);
    return json;
  }

  /** Streams a chat completion. `body` is an OpenAI chat request (`stream`
   * is set for you). `options`: `format`, `transport`, and `headers` to add
   * to this request (such as `X-Tokenedge-Prefix: on`; fetch only). */
  chat(body, options = {}) {
    return new Reply(this, body, options);
  }

  /** The open socket a reply should use, or null for fetch. */
  async socketFor(options = {}) {
    const transport = options.transport || this.transport;
    if (transport === "fetch" || !this.WebSocket || (transport === "auto" && this.noSocket)) return null;
    if (!this.socket || this.socket.closed) {
      const base = new URL(this.baseUrl || ".", globalThis.location ? globalThis.location.href : undefined);
      base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
      base.pathname = base.pathname.replace(/\/$/, "") + "/v1/ws";
      const protocols = ["tokenedge"];
      if (this.apiKey) protocols.push(`tokenedge.key.${this.apiKey}`);
      this.socket = new Socket(base.href, protocols, this.WebSocket);
    }
    try {
      return await this.socket.opened;
    } catch (e) {
      this.socket = null;
      if (transport === "auto") {
        // No socket here (Spin answers 501): fetch from now on.
        this.noSocket = true;
        return null;
      }
      throw e;
    }
  }

  /** Closes the socket, if one is open. */
  close() {
    if (this.socket) this.socket.close();
    this.socket = null;
  }

  /** A function to call as the user types, with the request the app would
   * send now: after `delayMs` without another call it asks the function to
   * warm the model's prompt cache with it (`POST /v1/prefetch`).
   * `onWarmed` hears each accepted warming. */
  prefetcher({ delayMs = 400, onWarmed = () => {} } = {}) {
    let timer = null;
    let last = null;
    return (body) => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        const json = JSON.stringify({ model: body.model, messages: body.messages });
        if (json === last) return;
        last = json;
        try {
          onWarmed(await this.post("/v1/prefetch", JSON.parse(json)));
        } catch {
          // A warming is only a hint.
        }
      }, delayMs);
    };
  }
}

// Types of tokenedge.js.

export type Format = "compact" | "openai" | "ndjson";

/** Where a stream is, as the function tells it (`generating` is added by
 * the client at the first token). */
export interface Status {
  phase: "waiting" | "prefill" | "generating";
  /** Prompt tokens: in all, found in the model's cache, read so far. */
  progress?: { total: number; cached: number; processed: number };
  elapsed_ms: number;
}

export interface Token {
  text: string;
  /** 0 for the first token. */
  index: number;
  /** Milliseconds since the request was sent. */
  t: number;
}

export interface Stats {
  /** Request sent → first token, as this client saw it. */
  ttftMs: number | null;
  tokens: number;
  durationMs: number | null;
  /** Tokens per second after the first. */
  tokensPerSec: number | null;
  /** Bytes of the stream after decoding. */
  decodedBytes: number;
  /** Bytes on the wire (compressed), where the platform tells. */
  wireBytes: number | null;
  /** `X-Cache` (hit, prefix, miss, bypass), when the deployment shows it. */
  cache: string | null;
  /** The function's own figures, from the stream's end. */
  server: { tokens: number; ttft_ms: number; duration_ms: number; failovers?: number } | null;
}

export interface Result {
  text: string;
  finishReason: string | null;
  usage: Record<string, unknown> | null;
  stats: Stats;
  /** The stream's id (`X-Tokenedge-Stream`), when resumable. */
  id: string | null;
}

export declare class TokenedgeError extends Error {
  status: number;
  type: string | null;
  code: string | null;
  param: string | null;
  retryable: boolean;
}

export interface ReplyEvents {
  open: { id: string | null; cache: string | null; status: number };
  status: Status;
  token: Token;
  delta: Record<string, unknown>;
  stats: Stats;
  reconnect: { attempt: number; lastEventId: string | null };
  resumed: { attempt: number; lastEventId: string | null };
  done: Result;
  error: TokenedgeError;
  /** Over a WebSocket: the answer was steered; the new turn follows. */
  steered: { text: string };
}

export declare class Reply {
  readonly id: string | null;
  readonly text: string;
  readonly stats: Stats;
  readonly done: Promise<Result>;
  /** The transport this reply went over. */
  readonly transport: Transport;
  on<K extends keyof ReplyEvents>(name: K, fn: (value: ReplyEvents[K]) => void): this;
  off<K extends keyof ReplyEvents>(name: K, fn: (value: ReplyEvents[K]) => void): this;
  stop(): Promise<void>;
  /** WebSocket only: stop and go on with the conversation with this user
   * message. */
  steer(message: string): void;
}

/** `fetch` resumes after a network drop; `websocket` (Workers only) carries
 * every request on one socket and can steer; `auto` takes the socket where
 * the deployment has one. */
export type Transport = "fetch" | "websocket" | "auto";

export interface ChatRequest {
  model: string;
  messages: Array<{ role: string; content: string | unknown[] }>;
  [field: string]: unknown;
}

export interface Options {
  /** The deployment's origin, e.g. "https://edge.example.com" ("" for the page's own). */
  baseUrl?: string;
  apiKey?: string | null;
  format?: Format;
  /** A streaming fetch (React Native: `fetch` from `expo/fetch`). */
  fetch?: typeof fetch;
  reconnect?: { attempts?: number; delayMs?: number };
  /** Default `fetch`. */
  transport?: Transport;
  /** A WebSocket constructor where the platform has none of its own. */
  WebSocket?: typeof WebSocket;
}

export declare class Tokenedge {
  constructor(options?: Options);
  readonly bandwidthKbps: number | null;
  chat(body: ChatRequest, options?: { format?: Format; transport?: Transport; headers?: Record<string, string> }): Reply;
  /** Closes the client's socket, if one is open. */
  close(): void;
  prefetcher(options?: { delayMs?: number; onWarmed?: (answer: unknown) => void }): (body: ChatRequest) => void;
}

export declare class Decoder {
  constructor(format?: Format);
  lastEventId: string | null;
  push(text: string): Array<{ type: string; [k: string]: unknown }>;
}

export declare class LinkMeter {
  kbps: number | null;
  read(t: number, bytes: number): void;
  finish(): void;
}

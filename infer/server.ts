/**
 * An OpenAI-compatible HTTP server over one InferenceSession: `POST /v1/chat/completions`,
 * `POST /v1/completions` (stream true or false; SSE chunks ending `data: [DONE]`) and
 * `GET /v1/models`. Requests queue on the single model instance; those waiting when it becomes
 * free run together as one batch (InferenceSession).
 * @module
 */
import { GREEDY, SamplingError, type SamplingParams } from "../model/sampling.ts";
import type { ChatMessage } from "../train/data/chat.ts";
import { type Generation, InferenceError, type InferenceSession } from "./session.ts";

export interface ServeOptions {
  hostname?: string;
  port?: number;
  /** Required unless bound to loopback. */
  apiKey?: string | null;
  /** The model's id in requests and /v1/models. */
  modelId: string;
  onListen?: (addr: Deno.NetAddr) => void;
}

const MAX_BODY = 1 << 20;
const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1"]);

class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

function errorResponse(e: ApiError): Response {
  return json(
    { error: { message: e.message, type: e.type, param: e.param, code: e.code } },
    e.status,
  );
}

const bad = (message: string, param: string | null = null, code: string | null = null) =>
  new ApiError(400, message, "invalid_request_error", param, code);

type Body = Record<string, unknown>;

function num(b: Body, k: string, d: number, check: (x: number) => boolean, what: string): number {
  const v = b[k];
  if (v === undefined || v === null) return d;
  if (typeof v !== "number" || !Number.isFinite(v) || !check(v)) {
    throw bad(`'${k}' must be ${what}, got ${JSON.stringify(v)}`, k);
  }
  return v;
}

/** The sampling fields of a request (OpenAI's names), over the model's defaults. */
function generationOf(b: Body, session: InferenceSession, maxKey: string) {
  const n = num(b, "n", 1, (x) => x === 1, "1 (only one choice per request is served)");
  void n;
  const temperature = num(b, "temperature", 1, (x) => x >= 0 && x <= 2, "a number in [0, 2]");
  const topP = num(b, "top_p", 1, (x) => x > 0 && x <= 1, "a number in (0, 1]");
  const topK = num(b, "top_k", 0, (x) => Number.isInteger(x) && x >= 0, "an integer >= 0");
  const rep = num(b, "repetition_penalty", 1, (x) => x > 0, "a positive number");
  const seed = num(b, "seed", 0, Number.isInteger, "an integer");
  const max = num(b, maxKey, NaN, (x) => Number.isInteger(x) && x >= 1, "an integer >= 1");
  let stop: string[] = [];
  if (typeof b.stop === "string") stop = [b.stop];
  else if (Array.isArray(b.stop) && b.stop.every((s) => typeof s === "string")) stop = b.stop;
  else if (b.stop !== undefined && b.stop !== null) {
    throw bad("'stop' must be a string or a list of strings", "stop");
  }
  if (stop.length > 4) throw bad("'stop' takes at most 4 strings", "stop");
  if (b.stream !== undefined && b.stream !== null && typeof b.stream !== "boolean") {
    throw bad("'stream' must be a boolean", "stream");
  }
  const params: SamplingParams = temperature === 0
    ? { ...GREEDY, repetitionPenalty: rep }
    : { doSample: true, temperature, topK, topP, repetitionPenalty: rep };
  return {
    params,
    seed: seed >>> 0,
    maxNewTokens: Number.isNaN(max) ? session.defaults.maxNewTokens : max,
    stop,
  };
}

function messagesOf(b: Body): ChatMessage[] {
  const m = b.messages;
  if (!Array.isArray(m) || m.length === 0) {
    throw bad("'messages' must be a non-empty list", "messages");
  }
  return m.map((x, i) => {
    const roles = ["system", "user", "assistant"];
    if (typeof x !== "object" || x === null || !roles.includes(x.role)) {
      throw bad(`messages[${i}].role must be one of ${roles.join(", ")}`, `messages[${i}].role`);
    }
    let content = x.content;
    if (Array.isArray(content)) {
      // Parts: only text ones.
      if (!content.every((p) => p?.type === "text" && typeof p.text === "string")) {
        throw bad(`messages[${i}].content: only text parts are served`, `messages[${i}].content`);
      }
      content = content.map((p: { text: string }) => p.text).join("");
    }
    if (typeof content !== "string") {
      throw bad(`messages[${i}].content must be a string`, `messages[${i}].content`);
    }
    return { role: x.role, content };
  });
}

/** Starts the server; refuses a non-loopback host without an API key. */
export function serve(
  session: InferenceSession,
  opts: ServeOptions,
): Deno.HttpServer<Deno.NetAddr> {
  const hostname = opts.hostname ?? "127.0.0.1";
  const apiKey = opts.apiKey ?? null;
  if (!LOOPBACK.has(hostname) && apiKey === null) {
    throw new InferenceError(
      `serving on ${hostname} (beyond this machine) needs an API key (--api-key)`,
      "api_key_required",
    );
  }
  let counter = 0;
  const ids = (prefix: string) => `${prefix}-${Date.now().toString(36)}${(counter++).toString(36)}`;

  const handle = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    if (apiKey !== null && req.headers.get("authorization") !== `Bearer ${apiKey}`) {
      throw new ApiError(
        401,
        "invalid or missing API key",
        "invalid_request_error",
        null,
        "invalid_api_key",
      );
    }
    const created = Math.floor(Date.now() / 1000);
    if (url.pathname === "/v1/models" && req.method === "GET") {
      return json({
        object: "list",
        data: [{ id: opts.modelId, object: "model", created, owned_by: "local" }],
      });
    }
    const chat = url.pathname === "/v1/chat/completions";
    if (!chat && url.pathname !== "/v1/completions") {
      throw new ApiError(
        404,
        `no route ${req.method} ${url.pathname}`,
        "invalid_request_error",
        null,
        "not_found",
      );
    }
    if (req.method !== "POST") {
      throw new ApiError(405, `${url.pathname} takes POST`, "invalid_request_error");
    }
    const raw = new Uint8Array(await req.arrayBuffer());
    if (raw.length > MAX_BODY) {
      throw new ApiError(413, `request body over ${MAX_BODY} bytes`, "invalid_request_error");
    }
    let body: Body;
    try {
      body = JSON.parse(new TextDecoder().decode(raw));
    } catch {
      throw bad("the body is not valid JSON");
    }
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      throw bad("the body must be a JSON object");
    }
    if (typeof body.model !== "string") throw bad("'model' must be a string", "model");
    if (body.model !== opts.modelId) {
      throw new ApiError(
        404,
        `the model '${body.model}' does not exist; this server has '${opts.modelId}'`,
        "invalid_request_error",
        "model",
        "model_not_found",
      );
    }
    let prompt: number[];
    if (chat) prompt = session.chatIds(messagesOf(body));
    else {
      let p = body.prompt;
      if (Array.isArray(p) && p.length === 1 && typeof p[0] === "string") p = p[0];
      if (typeof p !== "string") throw bad("'prompt' must be a string", "prompt");
      prompt = session.completionIds(p);
    }
    const g = generationOf(
      body,
      session,
      chat && body.max_completion_tokens !== undefined ? "max_completion_tokens" : "max_tokens",
    );
    if (chat) g.stop = [...g.stop, ...session.chatStops];
    const id = ids(chat ? "chatcmpl" : "cmpl");
    const object = chat ? "chat.completion" : "text_completion";
    const usage = (r: Generation) => ({
      prompt_tokens: r.promptTokens,
      completion_tokens: r.ids.length,
      total_tokens: r.promptTokens + r.ids.length,
    });
    if (body.stream !== true) {
      const [r] = await session.generate([prompt], g);
      const choice = chat
        ? {
          index: 0,
          message: { role: "assistant", content: r.text },
          finish_reason: r.finishReason,
          logprobs: null,
        }
        : { index: 0, text: r.text, finish_reason: r.finishReason, logprobs: null };
      return json({ id, object, created, model: opts.modelId, choices: [choice], usage: usage(r) });
    }
    // Streaming: the checks above already ran; errors from here on end the stream.
    const enc = new TextEncoder();
    const chunkObject = chat ? "chat.completion.chunk" : "text_completion";
    const includeUsage = (body.stream_options as Body | undefined)?.include_usage === true;
    const stream = new ReadableStream<Uint8Array>({
      start(ctrl) {
        const send = (x: unknown) => ctrl.enqueue(enc.encode(`data: ${JSON.stringify(x)}\n\n`));
        const chunk = (delta: string | null, finish: string | null, first = false) =>
          send({
            id,
            object: chunkObject,
            created,
            model: opts.modelId,
            choices: [
              chat
                ? {
                  index: 0,
                  delta: first
                    ? { role: "assistant", content: "" }
                    : delta === null
                    ? {}
                    : { content: delta },
                  finish_reason: finish,
                  logprobs: null,
                }
                : { index: 0, text: delta ?? "", finish_reason: finish, logprobs: null },
            ],
          });
        if (chat) chunk(null, null, true);
        session.generate([prompt], g, (_, delta) => chunk(delta, null)).then(([r]) => {
          chunk(null, r.finishReason);
          if (includeUsage) {
            send({
              id,
              object: chunkObject,
              created,
              model: opts.modelId,
              choices: [],
              usage: usage(r),
            });
          }
          ctrl.enqueue(enc.encode("data: [DONE]\n\n"));
          ctrl.close();
        }).catch((e) => {
          send({
            error: {
              message: String(e?.message ?? e),
              type: "server_error",
              param: null,
              code: null,
            },
          });
          ctrl.close();
        });
      },
    });
    return new Response(stream, {
      headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
    });
  };

  return Deno.serve({
    hostname,
    port: opts.port ?? 8000,
    onListen: opts.onListen ?? (() => {}),
  }, async (req) => {
    try {
      return await handle(req);
    } catch (e) {
      if (e instanceof ApiError) return errorResponse(e);
      if (e instanceof InferenceError) {
        return errorResponse(bad(e.message, e.param, e.reason));
      }
      if (e instanceof SamplingError) return errorResponse(bad(e.message));
      if (e instanceof Error && "code" in e.constructor) {
        // The model's own input checks (an unknown token and the like).
        return errorResponse(bad(e.message));
      }
      console.error(e);
      return errorResponse(new ApiError(500, "internal error", "server_error"));
    }
  });
}

/**
 * One loaded model for inference (generate, chat, serve): the weights on one LlamaGpu, the
 * tokenizer, the chat template when there is one, the stop ids and generation_config.json's
 * sampling defaults. Requests are queued on the single instance; those waiting when it becomes
 * free are decoded together as one batch (up to `maxBatch` sequences), each sequence with its
 * own sampling settings and seed, token limit, stop strings and stream. A sequence's tokens do
 * not depend on what it is batched with (model/generate.ts), so an answer is the same whether
 * its request ran alone or batched.
 * @module
 */
import { z } from "zod";
import { DomainError } from "../core/errors.ts";
import { Gpu } from "../gpu/mod.ts";
import type { LlamaConfig } from "../model/config.ts";
import { LlamaGpu, WEIGHTS_DTYPES, type WeightsDtype } from "../model/llama.ts";
import { loadModelFolder } from "../model/safetensors.ts";
import {
  argmaxOf,
  checkSampling,
  isPlainGreedy,
  makeSampler,
  readGenerationConfig,
  samplingFromGenerationConfig,
  type SamplingParams,
} from "../model/sampling.ts";
import { loadTokenizer, type Tokenizer } from "../model/tokenizer.ts";
import { ChatFormat, type ChatMessage } from "../train/data/chat.ts";
import { promptIds } from "../train/data/encode.ts";
import { stopIdsOf } from "../train/eval/evaluate.ts";

/**
 * `--weights-dtype` of the inference programs (generate, chat, serve), declared once here: the
 * model's matrices in bf16/f16 on the device halve their memory; compute stays f32.
 */
export const WEIGHTS_DTYPE_FLAG = {
  type: "enum",
  choices: WEIGHTS_DTYPES,
  default: "f32",
  help: "dtype of the weight matrices on the device (bf16/f16 halve their memory; f32 compute)",
} as const;

/**
 * A request the model cannot serve as asked: `reason` is OpenAI's error code for it (e.g.
 * `context_length_exceeded`), `param` the request field to blame.
 */
export class InferenceError extends DomainError {
  static override readonly code: string = "INFERENCE";
  static readonly fields = z.object({ reason: z.string(), param: z.string().nullable() });
  constructor(message: string, readonly reason: string, readonly param: string | null = null) {
    super(message);
  }
}

export interface GenerationRequest {
  params: SamplingParams;
  seed: number;
  /** null: up to the context length (at most 256). */
  maxNewTokens: number | null;
  /** Text that ends a generation (not included in the text). */
  stop: readonly string[];
}

export interface Generation {
  text: string;
  /** Generated tokens, a final stop id included. */
  ids: number[];
  promptTokens: number;
  finishReason: "stop" | "length";
}

/** The plain format of a model without a chat template. */
export function plainChatPrompt(messages: readonly ChatMessage[]): string {
  const lines = messages.map((m) =>
    m.role === "system"
      ? `${m.content}\n`
      : `${m.role === "user" ? "User" : "Assistant"}: ${m.content}\n`
  );
  return `${lines.join("")}Assistant:`;
}

/** A queued generate() call. */
interface Job {
  prompts: readonly number[][];
  req: GenerationRequest;
  maxNew: number;
  onText?: (seq: number, delta: string) => void;
  resolve: (g: Generation[]) => void;
  reject: (e: unknown) => void;
}

/** Sequences decoded together at most, by default. */
export const DEFAULT_MAX_BATCH = 8;

export class InferenceSession {
  #pending: Job[] = [];
  #running: Promise<void> | null = null;
  #ownsGpu: boolean;
  #maxBatch: number;

  private constructor(
    readonly dir: string,
    readonly config: LlamaConfig,
    readonly tok: Tokenizer,
    readonly chat: ChatFormat | null,
    readonly stopIds: number[],
    readonly defaults: SamplingParams & { maxNewTokens: number | null },
    readonly gpu: Gpu,
    readonly model: LlamaGpu,
    ownsGpu: boolean,
    maxBatch: number,
  ) {
    this.#ownsGpu = ownsGpu;
    this.#maxBatch = maxBatch;
  }

  /**
   * Loads a model folder. `maxBatch`: sequences of waiting requests decoded together at most
   * (default 8; 1 runs the requests one after another; a request with more prompts still runs
   * them together).
   */
  static async open(
    dir: string,
    opts: { gpu?: Gpu; maxBatch?: number; weightsDtype?: WeightsDtype } = {},
  ): Promise<InferenceSession> {
    const maxBatch = opts.maxBatch ?? DEFAULT_MAX_BATCH;
    if (!Number.isInteger(maxBatch) || maxBatch < 1) {
      throw new RangeError(`maxBatch must be an integer >= 1, got ${maxBatch}`);
    }
    const folder = await loadModelFolder(dir);
    const tok = await loadTokenizer(dir, folder.config);
    const chat = tok.chat === null ? null : ChatFormat.of(tok, dir);
    const stopIds = stopIdsOf(folder.config, tok, chat);
    const defaults = samplingFromGenerationConfig(await readGenerationConfig(dir));
    const gpu = opts.gpu ?? await Gpu.open();
    try {
      const model = await LlamaGpu.create(gpu, folder.config, folder.tensors, {
        maxRows: 1,
        seqLen: 1,
        gradients: "none",
        weightsDtype: opts.weightsDtype,
      });
      return new InferenceSession(
        dir,
        folder.config,
        tok,
        chat,
        stopIds,
        defaults,
        gpu,
        model,
        opts.gpu === undefined,
        maxBatch,
      );
    } catch (e) {
      if (opts.gpu === undefined) gpu.close();
      throw e;
    }
  }

  get contextLength(): number {
    return this.config.max_position_embeddings;
  }

  /** A completion prompt's ids: bos (when the tokenizer adds one) and the text. */
  completionIds(prompt: string): number[] {
    return promptIds(this.tok, prompt);
  }

  /** A chat prompt's ids: the chat template, or the plain "User:/Assistant:" format. */
  chatIds(messages: readonly ChatMessage[]): number[] {
    if (this.chat !== null) return this.chat.promptIds(messages);
    return promptIds(this.tok, plainChatPrompt(messages));
  }

  /** Stop strings of chats without a template: the next "User:" turn. */
  get chatStops(): string[] {
    return this.chat === null ? ["\nUser:"] : [];
  }

  /**
   * Generates for each prompt (queued behind earlier calls; batched with the calls waiting
   * beside it). `onText(seq, delta)` streams the text as it is decoded, stop strings withheld.
   */
  generate(
    prompts: readonly number[][],
    req: GenerationRequest,
    onText?: (seq: number, delta: string) => void,
  ): Promise<Generation[]> {
    checkSampling(req.params);
    const longest = Math.max(...prompts.map((p) => p.length));
    const room = this.contextLength - longest;
    if (room < 1 || (req.maxNewTokens !== null && req.maxNewTokens > room)) {
      throw new InferenceError(
        `this model's context length is ${this.contextLength} tokens; the prompt has ${longest}` +
          (req.maxNewTokens !== null ? ` and ${req.maxNewTokens} new tokens were asked for` : ""),
        "context_length_exceeded",
        req.maxNewTokens !== null && room >= 1 ? "max_tokens" : "messages",
      );
    }
    const maxNew = req.maxNewTokens ?? Math.min(room, 256);
    return new Promise<Generation[]>((resolve, reject) => {
      this.#pending.push({ prompts, req, maxNew, onText, resolve, reject });
      this.#running ??= this.#drain();
    });
  }

  /** Runs the waiting requests, a batch at a time, until none is left. */
  async #drain(): Promise<void> {
    // Let requests that arrive together (the same macrotask) join the first batch.
    await new Promise((r) => setTimeout(r, 0));
    try {
      while (this.#pending.length > 0) {
        const batch = this.#takeBatch();
        try {
          await this.#run(batch);
        } catch (e) {
          for (const j of batch) j.reject(e);
        }
      }
    } finally {
      this.#running = null;
    }
  }

  /**
   * The first waiting request, and the ones after it in order while the batch holds at most
   * maxBatch sequences and its longest prompt plus its largest token limit fits the context.
   */
  #takeBatch(): Job[] {
    const batch = [this.#pending.shift()!];
    let seqs = batch[0].prompts.length;
    let longest = Math.max(...batch[0].prompts.map((p) => p.length));
    let steps = batch[0].maxNew;
    while (this.#pending.length > 0) {
      const j = this.#pending[0];
      const l = Math.max(longest, ...j.prompts.map((p) => p.length));
      const s = Math.max(steps, j.maxNew);
      if (seqs + j.prompts.length > this.#maxBatch || l + s > this.contextLength) break;
      batch.push(this.#pending.shift()!);
      seqs += j.prompts.length;
      longest = l;
      steps = s;
    }
    return batch;
  }

  async #run(batch: readonly Job[]): Promise<void> {
    const stops = new Set(this.stopIds);
    // One entry per sequence of the batch, in the order of the requests and their prompts.
    const seqs = batch.flatMap((job, jobIndex) =>
      job.prompts.map((prompt, i) => ({
        job,
        jobIndex,
        i,
        prompt,
        ids: [] as number[],
        text: "",
        sent: 0,
        done: false,
        stopped: false,
      }))
    );
    const failed = new Map<number, unknown>(); // a request whose stream callback threw
    const send = (st: (typeof seqs)[number], delta: string) => {
      if (st.job.onText === undefined || failed.has(st.jobIndex)) return;
      try {
        st.job.onText(st.i, delta);
      } catch (e) {
        failed.set(st.jobIndex, e);
        for (const o of seqs) if (o.jobIndex === st.jobIndex) o.done = true;
      }
    };
    const hold = (text: string, stopStrings: readonly string[]) => {
      // The longest end of `text` that could begin a stop string, and an unfinished character.
      let h = 0;
      for (const s of stopStrings) {
        for (let k = Math.min(s.length - 1, text.length); k > h; k--) {
          if (text.endsWith(s.slice(0, k))) {
            h = k;
            break;
          }
        }
      }
      if (text.endsWith("\uFFFD")) h = Math.max(h, 1);
      return h;
    };
    const onToken = (seq: number, id: number): boolean => {
      const st = seqs[seq];
      if (st.done) return true;
      const stopStrings = st.job.req.stop;
      st.ids.push(id);
      if (stops.has(id)) {
        st.done = st.stopped = true;
      } else {
        st.text = this.tok.decode(st.ids);
        for (const s of stopStrings) {
          const at = st.text.indexOf(s);
          if (s.length > 0 && at >= 0) {
            st.text = st.text.slice(0, at);
            st.done = st.stopped = true;
          }
        }
      }
      if (st.ids.length >= st.job.maxNew) st.done = true; // its own token limit
      const end = st.done ? st.text.length : st.text.length - hold(st.text, stopStrings);
      if (end > st.sent) {
        send(st, st.text.slice(st.sent, end));
        st.sent = end;
      }
      return st.done;
    };
    // Each request's own sampler; prompt i of a request draws with seed + i, as when alone.
    const samplers = batch.map((j) =>
      isPlainGreedy(j.req.params) ? null : makeSampler(j.req.params, j.req.seed)
    );
    const sample = samplers.every((s) => s === null)
      ? undefined
      : (logits: Float32Array, seq: number, history: readonly number[]) => {
        const st = seqs[seq];
        const f = samplers[st.jobIndex];
        return f === null ? argmaxOf(logits) : f(logits, st.i, history);
      };
    await this.model.generate(seqs.map((s) => s.prompt), {
      maxNewTokens: Math.max(...batch.map((j) => j.maxNew)),
      stopIds: this.stopIds,
      sample,
      onToken,
    });
    for (const st of seqs) {
      if (st.sent < st.text.length) {
        send(st, st.text.slice(st.sent));
        st.sent = st.text.length;
      }
    }
    batch.forEach((job, jobIndex) => {
      if (failed.has(jobIndex)) return job.reject(failed.get(jobIndex));
      job.resolve(
        seqs.filter((st) => st.jobIndex === jobIndex).map((st) => ({
          text: st.text,
          ids: st.ids,
          promptTokens: st.prompt.length,
          finishReason: st.stopped ? "stop" : "length",
        })),
      );
    });
  }

  async close(): Promise<void> {
    while (this.#running !== null) await this.#running;
    this.model.close();
    if (this.#ownsGpu) this.gpu.close();
  }
}

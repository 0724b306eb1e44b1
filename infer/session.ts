/**
 * One loaded model for inference (generate, chat, serve): the weights on one LlamaGpu, the
 * tokenizer, the chat template when there is one, the stop ids and generation_config.json's
 * sampling defaults. Requests are queued and run one after another on the single instance; a
 * request may hold a batch of prompts, decoded together.
 * @module
 */
import { DomainError } from "../core/errors.ts";
import { Gpu } from "../gpu/mod.ts";
import type { LlamaConfig } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import { loadModelFolder } from "../model/safetensors.ts";
import {
  checkSampling,
  makeSampler,
  readGenerationConfig,
  samplingFromGenerationConfig,
  type SamplingParams,
} from "../model/sampling.ts";
import { loadTokenizer, type Tokenizer } from "../model/tokenizer.ts";
import { ChatFormat, type ChatMessage } from "../train/data/chat.ts";
import { promptIds } from "../train/data/encode.ts";
import { stopIdsOf } from "../train/eval/evaluate.ts";

export class InferenceError extends DomainError {
  static override readonly code: string = "INFERENCE";
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

export class InferenceSession {
  #queue: Promise<unknown> = Promise.resolve();
  #ownsGpu: boolean;

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
  ) {
    this.#ownsGpu = ownsGpu;
  }

  static async open(dir: string, opts: { gpu?: Gpu } = {}): Promise<InferenceSession> {
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
   * Generates for each prompt (queued behind earlier calls). `onText(seq, delta)` streams the
   * text as it is decoded, stop strings withheld.
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
    const run = this.#queue.then(() => this.#run(prompts, req, maxNew, onText));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #run(
    prompts: readonly number[][],
    req: GenerationRequest,
    maxNew: number,
    onText?: (seq: number, delta: string) => void,
  ): Promise<Generation[]> {
    const stops = new Set(this.stopIds);
    const state = prompts.map(() => ({
      ids: [] as number[],
      text: "",
      sent: 0,
      done: false,
      stopped: false,
    }));
    const hold = (text: string) => {
      // The longest end of `text` that could begin a stop string, and an unfinished character.
      let h = 0;
      for (const s of req.stop) {
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
      const st = state[seq];
      if (st.done) return true;
      st.ids.push(id);
      if (stops.has(id)) {
        st.done = st.stopped = true;
      } else {
        st.text = this.tok.decode(st.ids);
        for (const s of req.stop) {
          const at = st.text.indexOf(s);
          if (s.length > 0 && at >= 0) {
            st.text = st.text.slice(0, at);
            st.done = st.stopped = true;
          }
        }
      }
      const end = st.done ? st.text.length : st.text.length - hold(st.text);
      if (end > st.sent) {
        onText?.(seq, st.text.slice(st.sent, end));
        st.sent = end;
      }
      return st.done;
    };
    const sampler = req.params.doSample || req.params.repetitionPenalty !== 1
      ? makeSampler(req.params, req.seed)
      : undefined;
    await this.model.generate(prompts, {
      maxNewTokens: maxNew,
      stopIds: this.stopIds,
      sample: sampler,
      onToken,
    });
    return state.map((st, i) => {
      if (!st.done && st.sent < st.text.length) {
        onText?.(i, st.text.slice(st.sent));
        st.sent = st.text.length;
      }
      return {
        text: st.text,
        ids: st.ids,
        promptTokens: prompts[i].length,
        finishReason: st.stopped ? "stop" : "length",
      };
    });
  }

  async close(): Promise<void> {
    await this.#queue;
    this.model.close();
    if (this.#ownsGpu) this.gpu.close();
  }
}

/**
 * Benchmark evaluation (docs/architecture.md §9): greedy decoding of every prompt, batched with a KV cache,
 * until a stop id or `maxNewTokens`, then exact match of the trimmed answer against the trimmed
 * reference, per task and overall.
 *
 * Three pieces, so that a distributed driver can spread the prompts over several workers:
 * `prepareEval` (which examples, their prompt ids, the decoding limits), the generation itself
 * (`generateAnswers` on one `LlamaGpu`, or any worker that returns the new tokens per item) and
 * `scoreGenerations` (decode and score). `evaluateModel` runs all three in one process.
 * @module
 */
import { DomainError } from "../../core/errors.ts";
import { Gpu } from "../../gpu/mod.ts";
import type { LlamaConfig } from "../../model/config.ts";
import { LlamaGpu } from "../../model/llama.ts";
import { loadModelFolder } from "../../model/safetensors.ts";
import { loadTokenizer, type Tokenizer } from "../../model/tokenizer.ts";
import { conversationOf, promptIds } from "../data/encode.ts";
import { ChatFormat } from "../data/chat.ts";
import { ChatTemplateError } from "../data/errors.ts";
import {
  DEFAULT_EVAL_PER_TASK,
  type EvalScore,
  evalSubset,
  exactMatch,
  scoreExactMatch,
} from "./score.ts";
import { type Example, type JsonlOptions, loadJsonl } from "../data/jsonl.ts";

/** Evaluation that cannot run: a missing model folder, bad limits, mismatched generations. */
export class EvaluationError extends DomainError {
  static override readonly code: string = "EVALUATION";
}

/** How many new tokens a reference may be followed by before decoding gives up (docs/architecture.md §9). */
export const EXTRA_NEW_TOKENS = 8;

/** One prompt to decode. */
export interface EvalItem {
  /** Index of the example in the data set. */
  index: number;
  task: string;
  /**
   * [bos] + enc(prompt), the prefix training puts before a response; under a chat template, the
   * conversation's tokens before the answer's content (ChatFormat.promptIds).
   */
  prompt: number[];
  reference: string;
}

/** What every worker needs to decode its share of the items. */
export interface PreparedEval {
  items: EvalItem[];
  maxNewTokens: number;
  stopIds: number[];
}

export interface PrepareEvalOptions {
  /** Examples per task label, chosen by `evalSubset` (default 50). Ignored with `all`. */
  perTask?: number;
  /** Every example, in file order. */
  all?: boolean;
  /** Seed of the per-task subset (default 0). */
  seed?: number;
  /** Default: the longest reference of the chosen examples in tokens + 8. */
  maxNewTokens?: number;
  /** Ids that end an answer (default: the tokenizer's eos). */
  stopIds?: readonly number[];
  /** The model's chat template, for conversations and `chatTemplate`. */
  chat?: ChatFormat | null;
  /** Prompt/response examples through the chat template too (a user turn, then the answer). */
  chatTemplate?: boolean;
}

/** The chosen examples with their prompt ids and the decoding limits. */
export function prepareEval(
  tok: Tokenizer,
  examples: readonly Example[],
  opts: PrepareEvalOptions = {},
): PreparedEval {
  if (examples.length === 0) throw new EvaluationError("no examples to evaluate");
  const indices = opts.all
    ? examples.map((_, i) => i)
    : evalSubset(examples, opts.perTask ?? DEFAULT_EVAL_PER_TASK, opts.seed ?? 0);
  const items = indices.map((index): EvalItem => {
    const e = examples[index];
    return {
      index,
      task: e.task,
      prompt: evalPromptIds(tok, e, index, opts),
      reference: e.response,
    };
  });
  let maxNewTokens = opts.maxNewTokens;
  if (maxNewTokens === undefined) {
    let longest = 0;
    for (const it of items) longest = Math.max(longest, tok.encode(it.reference).length);
    maxNewTokens = longest + EXTRA_NEW_TOKENS;
  } else if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) {
    throw new EvaluationError(`max_new_tokens must be an integer >= 1, got ${maxNewTokens}`);
  }
  const stopIds = [...(opts.stopIds ?? [tok.eos])];
  if (stopIds.some((s) => !Number.isInteger(s) || s < 0)) {
    throw new EvaluationError(`stop ids must be token ids, got ${JSON.stringify(stopIds)}`);
  }
  return { items, maxNewTokens, stopIds };
}

/**
 * The prompt of an example: the conversation before its last assistant turn under the chat
 * template (a prompt/response example with `chatTemplate`: its prompt as a user turn), else
 * [bos] + enc(prompt).
 */
function evalPromptIds(
  tok: Tokenizer,
  e: Example,
  index: number,
  opts: PrepareEvalOptions,
): number[] {
  const conv = conversationOf(e, opts.chatTemplate);
  let ids: number[];
  if (conv === null) ids = promptIds(tok, e.prompt);
  else if (!opts.chat) {
    throw new ChatTemplateError(
      `example ${index}: a conversation needs the model's chat template, and the model has none`,
      "none",
    );
  } else {
    const last = conv.findLastIndex((m) => m.role === "assistant");
    ids = opts.chat.promptIds(conv.slice(0, last));
  }
  if (ids.length === 0) {
    throw new EvaluationError(
      `example ${index}: the prompt has no token (an empty prompt and a tokenizer without bos)`,
    );
  }
  return ids;
}

/**
 * The ids that end a generation: every eos id config.json lists, the tokenizer's eos ids (its
 * `eos_token`), and under a chat template the special token that closes an assistant turn
 * (`<|eot_id|>`, `<|im_end|>`). Any one of them ends it.
 */
export function stopIdsOf(
  config: LlamaConfig,
  tok: Tokenizer,
  chat: ChatFormat | null = null,
): number[] {
  const ids = config.eos_token_ids && config.eos_token_ids.length > 0
    ? [...config.eos_token_ids]
    : config.eos_token_id === null
    ? []
    : [config.eos_token_id];
  ids.push(...tok.stopIds, ...(chat?.endOfTurnIds() ?? []));
  return [...new Set(ids)];
}

/**
 * The chat format a data set needs: the model's template when `chatTemplate` is set or some
 * example is a conversation, else null. A ChatTemplateError when it needs one the model lacks.
 */
export function chatFormatFor(
  tok: Tokenizer,
  examples: readonly Example[],
  chatTemplate: boolean,
  modelDir: string,
): ChatFormat | null {
  if (!chatTemplate && !examples.some((e) => e.messages !== undefined)) return null;
  return ChatFormat.of(tok, modelDir);
}

/** One decoded answer. */
export interface EvalPrediction {
  index: number;
  task: string;
  prediction: string;
  reference: string;
  correct: boolean;
}

export interface EvalOutcome {
  score: EvalScore;
  /** Per item, in the order of `prepared.items` (for a debug dump). */
  predictions: EvalPrediction[];
}

/**
 * Decodes the new tokens of each item up to (not including) its first stop id and scores them.
 * `generated[i]` belongs to `prepared.items[i]`.
 */
export function scoreGenerations(
  tok: Tokenizer,
  prepared: PreparedEval,
  generated: readonly (readonly number[])[],
): EvalOutcome {
  if (generated.length !== prepared.items.length) {
    throw new EvaluationError(
      `${generated.length} generations for ${prepared.items.length} prompts`,
    );
  }
  const stops = new Set(prepared.stopIds);
  const predictions = prepared.items.map((it, i): EvalPrediction => {
    const ids = generated[i];
    const end = ids.findIndex((id) => stops.has(id));
    const prediction = tok.decode(end < 0 ? ids : ids.slice(0, end)).trim();
    return {
      index: it.index,
      task: it.task,
      prediction,
      reference: it.reference,
      correct: exactMatch(prediction, it.reference),
    };
  });
  return { score: scoreExactMatch(predictions), predictions };
}

export interface GenerateAnswersOptions {
  /** Prompts decoded together (default 64). */
  batchSize?: number;
  /** Called after each batch with the number of items done. */
  onBatch?: (done: number, total: number) => void;
}

/** Greedy answers of `items` (a whole PreparedEval or a worker's share of it) on one model. */
export async function generateAnswers(
  model: LlamaGpu,
  prepared: PreparedEval,
  items: readonly EvalItem[] = prepared.items,
  opts: GenerateAnswersOptions = {},
): Promise<number[][]> {
  const batchSize = opts.batchSize ?? 64;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new EvaluationError(`batch size must be an integer >= 1, got ${batchSize}`);
  }
  const out: number[][] = [];
  for (let i = 0; i < items.length; i += batchSize) {
    const chunk = items.slice(i, i + batchSize).map((it) => it.prompt);
    out.push(
      ...await model.generate(chunk, {
        maxNewTokens: prepared.maxNewTokens,
        stopIds: prepared.stopIds,
        batchSize,
      }),
    );
    opts.onBatch?.(out.length, items.length);
  }
  return out;
}

export interface EvaluateOptions
  extends Omit<PrepareEvalOptions, "chat">, JsonlOptions, GenerateAnswersOptions {
  /** An open engine to use (default: one opened and closed here). */
  gpu?: Gpu;
}

export interface EvalResult extends EvalOutcome {
  model: string;
  data: string;
  maxNewTokens: number;
  /** Wall time of loading, generation and scoring. */
  ms: number;
}

/** Loads a model folder and a JSONL file, generates every chosen answer and scores them. */
export async function evaluateModel(
  modelDir: string,
  jsonlPath: string,
  opts: EvaluateOptions = {},
): Promise<EvalResult> {
  const t0 = performance.now();
  await checkModelDir(modelDir);
  const dataset = await loadJsonl(jsonlPath, opts);
  const folder = await loadModelFolder(modelDir);
  const tok = await loadTokenizer(modelDir, folder.config);
  const chat = chatFormatFor(tok, dataset.examples, opts.chatTemplate ?? false, modelDir);
  const prepared = prepareEval(tok, dataset.examples, {
    ...opts,
    chat,
    stopIds: opts.stopIds ?? stopIdsOf(folder.config, tok, chat),
  });
  const gpu = opts.gpu ?? await Gpu.open();
  try {
    // generate() allocates its own buffers; the model's own activations are sized minimally.
    const model = await LlamaGpu.create(gpu, folder.config, folder.tensors, {
      maxRows: 1,
      seqLen: 1,
      gradients: "none",
    });
    try {
      const generated = await generateAnswers(model, prepared, prepared.items, opts);
      const outcome = scoreGenerations(tok, prepared, generated);
      return {
        ...outcome,
        model: modelDir,
        data: jsonlPath,
        maxNewTokens: prepared.maxNewTokens,
        ms: performance.now() - t0,
      };
    } finally {
      model.close();
    }
  } finally {
    if (!opts.gpu) gpu.close();
  }
}

async function checkModelDir(dir: string): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new EvaluationError(`model folder ${dir} does not exist`);
    }
    throw new EvaluationError(`model folder ${dir}: ${(e as Error).message}`);
  }
  if (!info.isDirectory) throw new EvaluationError(`${dir} is not a model folder`);
  try {
    await Deno.stat(`${dir}/config.json`);
  } catch {
    throw new EvaluationError(`model folder ${dir} has no config.json`);
  }
}

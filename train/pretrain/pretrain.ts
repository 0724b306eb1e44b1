/**
 * Pretraining a small LLaMA from scratch on one worker: every weight trains (embeddings, norms
 * and lm_head included), AdamW with warmup and cosine decay, gradients clipped by global norm,
 * next-token loss on every position of fixed-length windows of a byte-tokenized corpus.
 *
 * The corpus becomes one token stream `[bos] doc [eos] [bos] doc [eos] …`, so the model learns
 * to end a document with eos and to start one after bos, as the fine-tuning data frames an
 * answer (`[bos] prompt response [eos]`): a fine-tune whose adapters leave lm_head alone then
 * only has to route "the answer is complete" to a token the head already predicts. A training
 * row is a window of the stream at a uniformly random offset (documents are not aligned to
 * rows, so the end of every document, long ones included, is trained). The held-out loss is
 * the mean next-token loss over consecutive windows of the validation stream from its start.
 * @module
 */
import { DomainError } from "../../core/errors.ts";
import {
  adamwUpdate,
  clipByGlobalNorm,
  type Gpu,
  type GpuTensor,
  isRowParts,
  type Matrix,
  sumSquares,
} from "../../gpu/mod.ts";
import { expectedTensors, type LlamaConfig, parameterCount } from "../../model/config.ts";
import { LlamaGpu } from "../../model/llama.ts";
import { type HostTensor, saveModelFolder } from "../../model/safetensors.ts";
import { ByteTokenizer, type Tokenizer } from "../../model/tokenizer.ts";
import {
  CORPUS_SEED,
  CORPUS_TRAIN_BYTES,
  CORPUS_VALID_BYTES,
  corpusText,
  generateCorpus,
} from "../datagen/corpus.ts";
import type { MicroBatch } from "../../model/batch.ts";
import { Progress, type ProgressWriter } from "../cli/progress.ts";
import { writeJsonAtomic } from "../report/report.ts";
import { Rng } from "../../core/rng.ts";
import { learningRates } from "../optim/schedule.ts";

/** Bad pretraining options, an unusable corpus, an existing output or a diverged run. */
export class PretrainError extends DomainError {
  static override readonly code: string = "PRETRAIN";
}

export interface PretrainOptions {
  /** Output model folder. */
  out: string;
  /** Replace config.json / model.safetensors / pretrain.json already in `out`. */
  overwrite: boolean;
  corpus: string;
  valid: string;
  seed: number;
  steps: number;
  /** Windows per step. */
  batch: number;
  seqLen: number;
  lr: number;
  warmupRatio: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  clip: number;
  /** Held-out loss every this many steps (and after the last). */
  evalEvery: number;
  /** Held-out windows of `seqLen` tokens, from the start of the validation stream. */
  evalWindows: number;
  /** Also the final loss on every full window of the validation text. */
  fullValid: boolean;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  intermediate: number;
  tieEmbeddings: boolean;
  ropeTheta: number;
  /** max_position_embeddings; at least seqLen. */
  maxPositions: number;
  /** HF's initializer_range: the std of every matrix at initialisation. */
  initStd: number;
}

export const PRETRAIN_DEFAULTS: PretrainOptions = {
  out: "models/base",
  overwrite: false,
  corpus: "data/corpus/train.txt",
  valid: "data/corpus/valid.txt",
  seed: 1,
  steps: 6000,
  batch: 16,
  seqLen: 64,
  lr: 3e-3,
  warmupRatio: 0.02,
  weightDecay: 0.1,
  beta1: 0.9,
  beta2: 0.95,
  clip: 1.0,
  evalEvery: 250,
  evalWindows: 128,
  fullValid: true,
  hidden: 128,
  layers: 4,
  heads: 4,
  kvHeads: 2,
  intermediate: 344,
  tieEmbeddings: false,
  ropeTheta: 10000,
  maxPositions: 64,
  initStd: 0.02,
};

/** The LLaMA config that the size options describe, with the byte tokenizer's ids. */
export function pretrainModelConfig(o: PretrainOptions): LlamaConfig {
  const tok = new ByteTokenizer();
  return {
    hidden_size: o.hidden,
    intermediate_size: o.intermediate,
    num_hidden_layers: o.layers,
    num_attention_heads: o.heads,
    num_key_value_heads: o.kvHeads,
    vocab_size: tok.vocabSize,
    rms_norm_eps: 1e-5,
    rope_theta: o.ropeTheta,
    max_position_embeddings: o.maxPositions,
    tie_word_embeddings: o.tieEmbeddings,
    bos_token_id: tok.bos,
    eos_token_id: tok.eos,
    pad_token_id: tok.pad,
  };
}

/** Throws a PretrainError naming the first option that cannot work. */
export function checkPretrainOptions(o: PretrainOptions): void {
  const ints: [string, number, number][] = [
    ["steps", o.steps, 1],
    ["batch", o.batch, 1],
    ["seq-len", o.seqLen, 2],
    ["eval-every", o.evalEvery, 1],
    ["eval-windows", o.evalWindows, 1],
    ["hidden", o.hidden, 1],
    ["layers", o.layers, 1],
    ["heads", o.heads, 1],
    ["kv-heads", o.kvHeads, 1],
    ["intermediate", o.intermediate, 1],
    ["max-positions", o.maxPositions, 1],
  ];
  for (const [name, v, min] of ints) {
    if (!Number.isInteger(v) || v < min) {
      throw new PretrainError(`--${name} must be an integer >= ${min}, got ${v}`);
    }
  }
  if (!Number.isInteger(o.seed) || o.seed < 0) {
    throw new PretrainError(`--seed must be an integer >= 0, got ${o.seed}`);
  }
  if (o.hidden % o.heads !== 0 || (o.hidden / o.heads) % 2 !== 0) {
    throw new PretrainError(
      `--hidden ${o.hidden} must be a multiple of --heads ${o.heads} with an even head size`,
    );
  }
  if (o.heads % o.kvHeads !== 0) {
    throw new PretrainError(`--heads ${o.heads} must be a multiple of --kv-heads ${o.kvHeads}`);
  }
  if (o.seqLen > o.maxPositions) {
    throw new PretrainError(
      `--seq-len ${o.seqLen} exceeds max_position_embeddings ${o.maxPositions}`,
    );
  }
  const reals: [string, number, boolean][] = [
    ["lr", o.lr, o.lr > 0],
    ["warmup-ratio", o.warmupRatio, o.warmupRatio >= 0 && o.warmupRatio <= 1],
    ["weight-decay", o.weightDecay, o.weightDecay >= 0],
    ["beta1", o.beta1, o.beta1 >= 0 && o.beta1 < 1],
    ["beta2", o.beta2, o.beta2 >= 0 && o.beta2 < 1],
    ["clip", o.clip, o.clip > 0],
    ["init-std", o.initStd, o.initStd > 0],
    ["rope-theta", o.ropeTheta, o.ropeTheta > 0],
  ];
  for (const [name, v, ok] of reals) {
    if (!Number.isFinite(v) || !ok) throw new PretrainError(`--${name}: invalid value ${v}`);
  }
}

/**
 * Hugging Face LLaMA's `_init_weights`: every matrix (embeddings and lm_head included) drawn
 * from N(0, std²), every RMSNorm weight 1. Tensors are drawn in checkpoint order.
 */
export function initWeights(
  config: LlamaConfig,
  rng: Rng,
  std: number,
): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const spec of expectedTensors(config)) {
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const data = spec.shape.length === 1 ? new Float32Array(n).fill(1) : rng.normals(n, std);
    out.set(spec.name, { shape: [...spec.shape], data });
  }
  return out;
}

/** How a corpus file was cut into documents. */
export type DocumentSource = "generator" | "lines";

/**
 * The documents of a corpus file. The project's corpus files are documents joined by newlines,
 * and some documents (code) span several lines, so the file alone does not say where one ends:
 * when the text is byte for byte what `train/corpus.ts` writes for data/corpus/train.txt or
 * valid.txt, those generated documents are returned; any other text is one document per
 * non-empty line.
 */
export function corpusDocuments(text: string): { docs: string[]; source: DocumentSource } {
  if (text.length === 0) throw new PretrainError("the corpus is empty");
  const trainDocs = generateCorpus({ seed: CORPUS_SEED, bytes: CORPUS_TRAIN_BYTES });
  if (corpusText(trainDocs) === text) return { docs: trainDocs, source: "generator" };
  // scripts/make_data.ts: the validation text is seed + 1 without the train documents.
  const validDocs = generateCorpus({
    seed: CORPUS_SEED + 1,
    bytes: CORPUS_VALID_BYTES,
    exclude: new Set(trainDocs),
  });
  if (corpusText(validDocs) === text) return { docs: validDocs, source: "generator" };
  const docs = text.split("\n").map((l) => l.endsWith("\r") ? l.slice(0, -1) : l).filter((l) =>
    l.trim() !== ""
  );
  if (docs.length === 0) throw new PretrainError("the corpus holds no text");
  return { docs, source: "lines" };
}

/** `[bos] enc(doc) [eos]` for every document, concatenated (no bos if the tokenizer adds none). */
export function documentStream(tok: Tokenizer, docs: readonly string[]): Int32Array {
  const parts: number[][] = docs.map((d) => tok.encode(d));
  const bos = tok.bos === null ? 0 : 1;
  const n = parts.reduce((s, p) => s + p.length + bos + 1, 0);
  const out = new Int32Array(n);
  let o = 0;
  for (const p of parts) {
    if (tok.bos !== null) out[o++] = tok.bos;
    out.set(p, o);
    o += p.length;
    out[o++] = tok.eos;
  }
  return out;
}

/** `rows` windows of `seqLen` tokens at uniformly random offsets; every position a target. */
export function sampleWindows(
  stream: Int32Array,
  rng: Rng,
  rows: number,
  seqLen: number,
): MicroBatch {
  const span = stream.length - seqLen + 1;
  if (span < 1) {
    throw new PretrainError(
      `the corpus has ${stream.length} tokens, fewer than one window of ${seqLen}`,
    );
  }
  const ids = new Int32Array(rows * seqLen);
  for (let r = 0; r < rows; r++) {
    const s = rng.int(span);
    ids.set(stream.subarray(s, s + seqLen), r * seqLen);
  }
  return windowBatch(ids, rows, seqLen);
}

/**
 * The first `windows` consecutive windows of `seqLen` tokens of the stream (fewer when the
 * stream is shorter), in micro-batches of at most `rows` windows.
 */
export function heldOutBatches(
  stream: Int32Array,
  seqLen: number,
  windows: number,
  rows: number,
): MicroBatch[] {
  const n = Math.min(windows, Math.floor(stream.length / seqLen));
  if (n < 1) {
    throw new PretrainError(
      `the held-out text has ${stream.length} tokens, fewer than one window of ${seqLen}`,
    );
  }
  const out: MicroBatch[] = [];
  for (let w = 0; w < n; w += rows) {
    const m = Math.min(rows, n - w);
    const ids = stream.slice(w * seqLen, (w + m) * seqLen);
    out.push(windowBatch(ids, m, seqLen));
  }
  return out;
}

function windowBatch(ids: Int32Array, rows: number, seqLen: number): MicroBatch {
  return {
    ids,
    targetMask: new Uint8Array(rows * seqLen).fill(1),
    targets: rows * (seqLen - 1),
    rows,
    seqLen,
  };
}

/**
 * Mean next-token cross-entropy over every target of `batches` (each micro-batch's token mean,
 * weighted by its targets, summed in float64). Leaves the model's step inputs replaced.
 */
export async function heldOutLoss(
  model: LlamaGpu,
  batches: readonly MicroBatch[],
): Promise<number> {
  let sum = 0;
  let count = 0;
  for (const b of batches) {
    model.setStepBatches([b]);
    const rec = model.gpu.record({ label: "held-out loss" });
    let loss: Promise<Float32Array | Int32Array>;
    try {
      model.recordForward(rec);
      loss = rec.read(model.loss);
    } catch (e) {
      rec.discard();
      throw e;
    }
    await rec.submit();
    sum += (await loss)[0] * b.targets;
    count += b.targets;
  }
  return sum / count;
}

/** `pretrain.json`: how the model folder was made and how its loss went. */
export interface PretrainRecord {
  seed: number;
  command: string;
  options: Record<string, unknown>;
  config: LlamaConfig;
  parameters: number;
  steps: number;
  tokens_per_step: number;
  tokens: number;
  documents: { train: number; valid: number; source: DocumentSource };
  /** Training loss of every step (the mean over that step's windows). */
  train_loss: number[];
  /** Global gradient norm of every step, before clipping. */
  grad_norm: number[];
  /** Held-out loss on `heldout` after these steps (step 0: the initial weights). */
  valid_loss: { step: number; loss: number }[];
  /** The held-out slice and the final model's loss on it (recomputed by the tests). */
  heldout: { file: string; seq_len: number; windows: number; rows: number; loss: number };
  /** The final model's loss on every full window of the validation text (if computed). */
  valid_loss_full: { windows: number; loss: number } | null;
  /** Mean training loss of the last 100 steps (or all of them when fewer). */
  final_train_loss: number;
  wall_ms: number;
  device: string;
}

export interface PretrainHooks {
  /** Recorded in pretrain.json, e.g. "deno run -A examples/pretrain.ts --steps 6000". */
  command?: string;
  /** Where the progress display and log lines go (default standard error). */
  out?: ProgressWriter;
  /** Redraw the progress line in place (default: standard error is a terminal). */
  isTty?: boolean;
}

const MODEL_FILES = ["config.json", "model.safetensors", "pretrain.json"];

/**
 * Trains a model from scratch on `gpu` and writes `o.out`: config.json, model.safetensors and
 * pretrain.json. Returns the record written. The same options and seed give the same bits.
 */
export async function pretrain(
  gpu: Gpu,
  o: PretrainOptions,
  hooks: PretrainHooks = {},
): Promise<PretrainRecord> {
  checkPretrainOptions(o);
  await checkOutput(o.out, o.overwrite);
  const t0 = performance.now();
  const tok = new ByteTokenizer();
  const train = corpusDocuments(await readText(o.corpus, "corpus"));
  const valid = corpusDocuments(await readText(o.valid, "validation text"));
  const trainStream = documentStream(tok, train.docs);
  const validStream = documentStream(tok, valid.docs);
  const evalBatches = heldOutBatches(validStream, o.seqLen, o.evalWindows, o.batch);
  if (trainStream.length < o.seqLen) {
    throw new PretrainError(`${o.corpus}: fewer tokens than one window of ${o.seqLen}`);
  }

  const config = pretrainModelConfig(o);
  const rng = new Rng(o.seed);
  const model = await LlamaGpu.create(gpu, config, initWeights(config, rng, o.initStd), {
    maxRows: o.batch,
    seqLen: o.seqLen,
    gradients: "weights",
  });
  const held: GpuTensor[] = [];
  const progress = new Progress({
    total: o.steps,
    label: "pretrain",
    out: hooks.out,
    isTty: hooks.isTty,
  });
  try {
    const names = model.trainableNames();
    // A weight over the binding limit is row blocks: each block is its own optimizer tensor.
    const blocks = (m: Matrix) => isRowParts(m) ? [...m.parts] : [m];
    const pieces = names.flatMap((n) => {
      const Ws = blocks(model.weightMatrix(n)), Gs = blocks(model.weightGradMatrix(n));
      return Ws.map((param, i) => ({ n, param, grad: Gs[i], matrix: model.weightMatrix(n) }));
    });
    const grads = pieces.map((p) => p.grad);
    const zeros = (shape: readonly number[], what: string) => {
      const z = gpu.zeros([...shape], "f32", what);
      held.push(z);
      return z;
    };
    const states = pieces.map(({ n, param, grad, matrix }) => {
      return {
        state: {
          param,
          grad,
          m: zeros(param.shape, `m ${n}`),
          v: zeros(param.shape, `v ${n}`),
        },
        // Matrices only: a norm gain is a scale whose neutral value is 1, not 0.
        decay: isRowParts(matrix) || param.shape.length === 2 ? o.weightDecay : 0,
      };
    });
    const sumSq = zeros([1], "grad norm²");
    const partials = zeros([grads.length], "grad norm partials");
    const lrs = learningRates({
      schedule: "cosine",
      lr: o.lr,
      warmupRatio: o.warmupRatio,
      totalSteps: o.steps,
    });

    const record: PretrainRecord = {
      seed: o.seed,
      command: hooks.command ?? "",
      options: { ...o },
      config,
      parameters: parameterCount(config),
      steps: o.steps,
      tokens_per_step: o.batch * o.seqLen,
      tokens: o.steps * o.batch * o.seqLen,
      documents: { train: train.docs.length, valid: valid.docs.length, source: train.source },
      train_loss: [],
      grad_norm: [],
      valid_loss: [],
      heldout: {
        file: o.valid,
        seq_len: o.seqLen,
        windows: evalBatches.reduce((s, b) => s + b.rows, 0),
        rows: o.batch,
        loss: NaN,
      },
      valid_loss_full: null,
      final_train_loss: NaN,
      wall_ms: 0,
      device: gpu.info.description,
    };
    progress.log(
      `pretrain: ${record.parameters} parameters, ${trainStream.length} train tokens ` +
        `(${train.docs.length} documents, ${train.source}), ${o.steps} steps of ` +
        `${o.batch}×${o.seqLen} on ${gpu.info.description}`,
    );
    const evaluate = async (step: number) => {
      const loss = await heldOutLoss(model, evalBatches);
      record.valid_loss.push({ step, loss: round(loss) });
      progress.log(`step ${step}: held-out loss ${loss.toFixed(4)}`);
      return loss;
    };
    await evaluate(0);

    let tStep = performance.now();
    for (let t = 0; t < o.steps; t++) {
      model.setStepBatches([sampleWindows(trainStream, rng, o.batch, o.seqLen)]);
      const rec = gpu.record({ label: "pretrain step" });
      let lossRead: Promise<Float32Array | Int32Array>;
      let normRead: Promise<Float32Array | Int32Array>;
      try {
        model.recordForwardBackward(rec);
        sumSquares(rec, sumSq, partials, grads);
        normRead = rec.read(sumSq);
        clipByGlobalNorm(rec, grads, sumSq, o.clip);
        for (const { state, decay } of states) {
          adamwUpdate(rec, state, {
            lr: lrs[t],
            step: t + 1,
            beta1: o.beta1,
            beta2: o.beta2,
            weightDecay: decay,
          });
        }
        lossRead = rec.read(model.loss);
      } catch (e) {
        rec.discard();
        throw e;
      }
      await rec.submit();
      const loss = (await lossRead)[0];
      const norm = Math.sqrt((await normRead)[0]);
      if (!Number.isFinite(loss) || !Number.isFinite(norm)) {
        throw new PretrainError(
          `step ${t}: the loss (${loss}) or gradient norm (${norm}) is not finite; ` +
            `try a lower --lr than ${o.lr}`,
        );
      }
      record.train_loss.push(round(loss));
      record.grad_norm.push(round(norm));
      const now = performance.now();
      progress.update(t + 1, { loss, tokensPerSec: (o.batch * o.seqLen * 1000) / (now - tStep) });
      tStep = now;
      if ((t + 1) % o.evalEvery === 0 || t + 1 === o.steps) {
        await evaluate(t + 1);
        tStep = performance.now();
      }
    }
    const last = record.train_loss.slice(-100);
    record.final_train_loss = round(last.reduce((s, v) => s + v, 0) / last.length);
    record.heldout.loss = record.valid_loss.at(-1)!.loss;
    if (o.fullValid) {
      const full = heldOutBatches(validStream, o.seqLen, Infinity, o.batch);
      record.valid_loss_full = {
        windows: full.reduce((s, b) => s + b.rows, 0),
        loss: round(await heldOutLoss(model, full)),
      };
    }
    record.wall_ms = Math.round(performance.now() - t0);

    await Deno.mkdir(o.out, { recursive: true });
    await saveModelFolder(o.out, config, await model.readWeights());
    await writeJsonAtomic(`${o.out.replace(/\/+$/, "")}/pretrain.json`, record);
    progress.done(
      `pretrain: train loss ${record.final_train_loss} (mean of the last ${last.length} steps), ` +
        `held-out ${record.heldout.loss} (${record.heldout.windows} windows)` +
        (record.valid_loss_full ? `, full valid ${record.valid_loss_full.loss}` : "") +
        `; wrote ${o.out} in ${(record.wall_ms / 1000).toFixed(0)} s`,
    );
    return record;
  } finally {
    progress.done();
    for (const t of held) if (t.allocation.alive) gpu.release(t);
    model.close();
  }
}

/** Six significant digits: enough for a loss curve, and the JSON stays small. */
function round(x: number): number {
  return Number(x.toPrecision(6));
}

async function readText(path: string, what: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new PretrainError(`${what} ${path}: no such file`);
    throw new PretrainError(`${what} ${path}: cannot read: ${(e as Error).message}`);
  }
}

async function checkOutput(dir: string, overwrite: boolean): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw e;
  }
  if (!info.isDirectory) throw new PretrainError(`--out ${dir} exists and is not a folder`);
  if (overwrite) return;
  for (const f of MODEL_FILES) {
    try {
      await Deno.stat(`${dir}/${f}`);
      throw new PretrainError(
        `--out ${dir} already holds ${f}; pass --overwrite to replace the model there`,
      );
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
}

/**
 * A Hugging Face LLaMA model on the WebGPU engine: forward, masked cross-entropy loss, backward
 * (adapter gradients, full-weight gradients, or none) and greedy generation with a KV cache.
 *
 * Like llm.c, every activation and gradient buffer is allocated once, sized by `maxRows` and
 * `seqLen`; a training step is recorded into one Recorder (one submit): zero the gradients,
 * then forward and backward of each micro-batch in turn, accumulating gradients and the loss.
 *
 * ```ts
 * const model = await LlamaGpu.create(gpu, config, weights, {
 *   maxRows: 4, seqLen: 64, adapters: { targets: LINEAR_KINDS, rank: 4 }, gradients: "adapters",
 * });
 * model.setStepBatches([microBatch]);
 * const rec = gpu.record();
 * model.recordForwardBackward(rec);
 * const loss = rec.read(model.loss);
 * await rec.submit();
 * ```
 * @module
 */
import {
  accumulate,
  attentionForward,
  createRopeTable,
  crossEntropy,
  embeddingBackwardParts,
  embeddingForwardParts,
  EmbeddingGradPlan,
  fill,
  type Gpu,
  type GpuTensor,
  isHalf,
  type Matrix,
  maxBlockRows,
  type Recorder,
  rmsnormForward,
  type RopeTable,
  type RowParts,
  sum,
} from "../gpu/mod.ts";
import { expectedTensors, LINEAR_KINDS, type LinearKind, type LlamaConfig } from "./config.ts";
import type { HostTensor, TensorRows } from "./safetensors.ts";
import type { MicroBatch } from "../model/batch.ts";
import {
  type Attention,
  type BlockContext,
  type Dims,
  dimsOf,
  type HeadActs,
  headLogits,
  headLogitsBackward,
  headNormBackward,
  type LayerActs,
  layerActsRows,
  layerBackward,
  layerForward,
  type LayerGrads,
  lmHeadName,
} from "./llama_blocks.ts";
import type { AdapterBuffers, AdapterScales, LinearScratch } from "./llama_linear.ts";
import {
  checkWeights,
  halfBits,
  hostRows,
  LlamaParams,
  ROW_SPLIT_NAMES,
  WEIGHTS_DTYPES,
  type WeightsDtype,
} from "./llama_params.ts";
import { ropeInvFreq } from "./rope.ts";
import { LlamaInputError, LlamaOptionsError, LlamaWeightError } from "./llama_errors.ts";
import { generateGreedy, type GenerateOptions } from "./generate.ts";

export {
  LlamaError,
  LlamaInputError,
  LlamaOptionsError,
  LlamaWeightError,
} from "./llama_errors.ts";
export type { AdapterBuffers, AdapterScales } from "./llama_linear.ts";
export { WEIGHTS_DTYPES, type WeightsDtype } from "./llama_params.ts";
export type { GenerateOptions } from "./generate.ts";

export interface LlamaGpuOptions {
  /** Examples per micro-batch (M) and tokens per example (S) the activations are sized for. */
  maxRows: number;
  seqLen: number;
  /** Micro-batches one step may hold (each has its own input buffers). Default 1. */
  maxMicroBatches?: number;
  /** Adapter slots (A [r, in], B [out, r], g_A, g_B) on every linear of these kinds. */
  adapters?: { targets: readonly LinearKind[]; rank: number };
  /**
   * "adapters": adapter gradients only; "weights": full-weight gradients of the weights that
   * `trainable` selects (all by default; tied embeddings get the sum of both uses), plus adapter
   * gradients when there are adapters; "none": inference only.
   */
  gradients: "adapters" | "weights" | "none";
  trainable?: (name: string) => boolean;
  /**
   * Positions whose logits exist at once (the lm_head and the loss run a chunk at a time).
   * Default: as many as fit one binding of [rows, V] f32, at most maxRows·seqLen.
   */
  headChunk?: number;
  /**
   * Activation checkpointing per layer (training only): keep only each layer's input (the
   * residual stream) during the forward, in one set of layer activations shared by all
   * layers, and recompute a layer's activations from its input just before its backward.
   * The same kernels run in the same order on the same inputs, so the gradients are the same
   * bits as without it; the cost is one more forward of every layer but the last. Default false.
   */
  recompute?: boolean;
  /**
   * Form each layer's RMSNorms in the loads of the matmuls that read them instead of writing the
   * normalized activations (model/llama_blocks.ts); the same bits either way, two [T, C]
   * buffers fewer per layer. Default true; false keeps the separate pass (to compare).
   */
  normOnLoad?: boolean;
  /**
   * The device dtype of the weight matrices (linears, embedding, lm_head): "f32" (default), or
   * "bf16"/"f16", two per 32-bit word, converted exactly to f32 in the kernels (compute stays
   * f32). Not with gradients "weights" (an optimizer needs an f32 W). See llama_params.ts.
   */
  weightsDtype?: WeightsDtype;
}

/** The options a model was built with, defaults filled in. */
export interface LlamaGpuSizes {
  readonly maxRows: number;
  readonly seqLen: number;
  readonly maxMicroBatches: number;
  readonly headChunk: number;
  readonly gradients: LlamaGpuOptions["gradients"];
  /** Layer activations recomputed in the backward (training only). */
  readonly recompute: boolean;
  /** The layers' RMSNorms are formed in the matmuls' loads (not written). */
  readonly normOnLoad: boolean;
  /** The device dtype of the weight matrices. */
  readonly weightsDtype: WeightsDtype;
  readonly adapters?: { readonly targets: readonly LinearKind[]; readonly rank: number };
}

/** Inputs of one micro-batch slot on the device. */
interface Slot {
  ids: GpuTensor;
  targets: GpuTensor;
  weights: GpuTensor;
  plan: EmbeddingGradPlan | null;
  rows: number;
  count: number;
}

/** The head chunk of `options` (checked), or the most positions whose logits fit one binding. */
function headChunkOf(gpu: Gpu, config: LlamaConfig, options: LlamaGpuOptions): number {
  const Tm = options.maxRows * options.seqLen;
  const fit = Math.floor(gpu.limits.maxStorageBufferBindingSize / (config.vocab_size * 4));
  if (options.headChunk !== undefined) {
    const c = options.headChunk;
    if (!Number.isInteger(c) || c < 1) {
      throw new LlamaOptionsError(`headChunk must be an integer >= 1, got ${c}`);
    }
    if (c > fit) {
      throw new LlamaOptionsError(
        `headChunk ${c}: logits [${c}, ${config.vocab_size}] are over the device's binding ` +
          `limit ${gpu.limits.maxStorageBufferBindingSize}; at most ${fit}`,
      );
    }
    return Math.min(c, Tm);
  }
  if (fit < 1) {
    throw new LlamaOptionsError(
      `one row of logits (${config.vocab_size} f32) is over the binding limit`,
    );
  }
  return Math.min(fit, Tm);
}

export class LlamaGpu {
  readonly gpu: Gpu;
  readonly config: LlamaConfig;
  readonly options: LlamaGpuSizes;
  /** The step's loss (f32 [1]): docs/architecture.md §4's worker loss after `recordForwardBackward`. */
  readonly loss: GpuTensor;

  #dims: Dims;
  #params: LlamaParams;
  #scales: AdapterScales = { sigma: 0, scale: 1, gamma: null, rescale: null };
  #tensors: GpuTensor[];
  #layers: LayerActs[];
  #head: HeadActs;
  #grads: LayerGrads | null;
  #scratch: LinearScratch | null;
  #splitBlock: GpuTensor | null;
  #losses: GpuTensor;
  #mbLoss: GpuTensor;
  #positions: GpuTensor;
  #rope: RopeTable;
  #slots: Slot[] = [];
  #inference: Slot;
  #active: number[] = [];
  /** Layers from `#stop` up run a backward; below it nothing needs a gradient. */
  #stop: number;
  #embedGrad: boolean;
  #closed = false;

  /** `held` collects every buffer as it is allocated, so that a failed construction frees them. */
  private constructor(
    gpu: Gpu,
    config: LlamaConfig,
    params: LlamaParams,
    options: LlamaGpuSizes,
    held: GpuTensor[],
  ) {
    this.#tensors = held;
    this.gpu = gpu;
    this.config = config;
    this.options = options;
    this.#params = params;
    const d = this.#dims = dimsOf(config);
    const M = options.maxRows;
    const S = options.seqLen;
    const Tm = M * S;
    const train = options.gradients !== "none";
    const t = (shape: number[], label: string, dtype: "f32" | "i32" = "f32") => {
      const x = gpu.tensor(shape, dtype, label);
      this.#tensors.push(x);
      return x;
    };
    const adapted = new Set<LinearKind>();
    for (const name of params.adapters.keys()) {
      adapted.add(LINEAR_KINDS.find((k) => name.endsWith(`.${k}.weight`))!);
    }
    const r = params.rank;

    // The residual stream: every layer's input is kept when training, one buffer otherwise.
    const resid: GpuTensor[] = [];
    for (let l = 0; l <= d.L; l++) {
      resid.push(train || l === 0 ? t([Tm, d.C], `resid ${l}`) : resid[0]);
    }
    // Each layer has its own activations when training without recomputation; otherwise the
    // layers share one set (each with its own input and output in the residual stream).
    const perLayer = train && !options.recompute;
    const onLoad = options.normOnLoad;
    let shared: LayerActs | null = null;
    this.#layers = [];
    for (let l = 0; l < d.L; l++) {
      if (!perLayer && shared) {
        this.#layers.push({ ...shared, x: resid[l], out: resid[l + 1] });
        continue;
      }
      const xa = new Map<LinearKind, GpuTensor>();
      for (const k of adapted) xa.set(k, t([Tm, r], `xa ${k} ${l}`));
      const a: LayerActs = {
        x: resid[l],
        ln1: onLoad ? null : t([Tm, d.C], `ln1 ${l}`),
        rstd1: t([Tm], `rstd1 ${l}`),
        q: t([Tm, d.H * d.D], `q ${l}`),
        k: t([Tm, d.KV * d.D], `k ${l}`),
        v: t([Tm, d.KV * d.D], `v ${l}`),
        att: t([Tm, d.H * d.D], `att ${l}`),
        lse: train ? t([Tm, d.H], `lse ${l}`) : null,
        xMid: t([Tm, d.C], `xMid ${l}`),
        ln2: onLoad ? null : t([Tm, d.C], `ln2 ${l}`),
        rstd2: t([Tm], `rstd2 ${l}`),
        gate: t([Tm, d.I], `gate ${l}`),
        up: t([Tm, d.I], `up ${l}`),
        h: t([Tm, d.I], `h ${l}`),
        xa,
        out: resid[l + 1],
      };
      this.#layers.push(a);
      if (!perLayer) shared = a;
    }
    this.#head = {
      x: resid[d.L],
      lnf: t([Tm, d.C], "lnf"),
      rstdf: t([Tm], "rstdf"),
      logits: t([options.headChunk, d.V], "logits chunk"),
    };
    this.#losses = t([Tm], "losses");
    this.#mbLoss = t([1], "micro-batch loss");
    this.loss = t([1], "loss");
    this.#grads = train
      ? {
        dx: t([Tm, d.C], "dx"),
        dln: t([Tm, d.C], "dln"),
        dh: t([Tm, d.I], "dh"),
        dgate: t([Tm, d.I], "dgate"),
        dup: t([Tm, d.I], "dup"),
        dao: t([Tm, d.H * d.D], "dao"),
        dq: t([Tm, d.H * d.D], "dq"),
        dk: t([Tm, d.KV * d.D], "dk"),
        dv: t([Tm, d.KV * d.D], "dv"),
        delta: t([Tm, d.H], "delta"),
      }
      : null;
    const maxOut = Math.max(d.C, d.I, d.H * d.D, d.KV * d.D);
    this.#scratch = train && r > 0 ? { dyB: t([Tm * r], "dyB"), dH: t([Tm * maxOut], "dH") } : null;
    // The column blocks of the linears held as row blocks (over the binding limit): one [Tm, n]
    // block at a time, shared by every layer (gpu/kernels/matmul_rows.ts).
    let splitRows = 0;
    for (const [name, parts] of params.rowParts) {
      if (parts.parts.length > 1 && !ROW_SPLIT_NAMES.includes(name)) {
        splitRows = Math.max(splitRows, maxBlockRows(parts));
      }
    }
    this.#splitBlock = splitRows > 0 ? t([Tm * splitRows], "split block") : null;

    const pos = new Int32Array(Tm);
    for (let i = 0; i < Tm; i++) pos[i] = i % S;
    this.#positions = gpu.upload(pos, [Tm], "positions");
    this.#tensors.push(this.#positions);
    // Every forward covers positions 0..S−1 (Hugging Face's seq_len = S for dynamic scaling).
    this.#rope = createRopeTable(gpu, {
      headDim: d.D,
      theta: config.rope_theta,
      maxPositions: S,
      invFreq: ropeInvFreq(config, S),
    });
    this.#tensors.push(this.#rope.cos, this.#rope.sin);

    this.#embedGrad = params.gradParts.has("model.embed_tokens.weight");
    const slot = (i: number, withPlan: boolean): Slot => ({
      ids: t([Tm], `ids ${i}`, "i32"),
      targets: t([Tm], `targets ${i}`, "i32"),
      weights: t([Tm], `loss weights ${i}`),
      plan: withPlan ? new EmbeddingGradPlan(gpu, Tm, d.V) : null,
      rows: 0,
      count: 0,
    });
    for (let i = 0; i < options.maxMicroBatches; i++) {
      const s = slot(i, this.#embedGrad);
      if (s.plan) held.push(s.plan.order, s.plan.starts, s.plan.ids);
      this.#slots.push(s);
    }
    this.#inference = slot(-1, false);

    // The lowest layer that owns a gradient; the backward stops there unless the embeddings
    // need the gradient of the residual stream below it.
    let lowest = d.L;
    for (const { name } of expectedTensors(config)) {
      const layer = /^model\.layers\.(\d+)\./.exec(name);
      if (layer && (params.grads.has(name) || (train && params.adapters.has(name)))) {
        lowest = Math.min(lowest, Number(layer[1]));
      }
    }
    this.#stop = this.#embedGrad ? 0 : lowest;
  }

  /** Validates the weights and options, uploads the weights and allocates every buffer. */
  static async create(
    gpu: Gpu,
    config: LlamaConfig,
    /** The weights in host memory, or `{ streamed }`: read one tensor at a time as uploaded. */
    weights: ReadonlyMap<string, HostTensor> | { streamed: ReadonlyMap<string, TensorRows> },
    options: LlamaGpuOptions,
  ): Promise<LlamaGpu> {
    const maxMicroBatches = options.maxMicroBatches ?? 1;
    for (
      const [k, v] of [["maxRows", options.maxRows], ["seqLen", options.seqLen], [
        "maxMicroBatches",
        maxMicroBatches,
      ]] as const
    ) {
      if (!Number.isInteger(v) || v < 1) {
        throw new LlamaOptionsError(`${k} must be an integer >= 1, got ${v}`);
      }
    }
    if (!["adapters", "weights", "none"].includes(options.gradients)) {
      throw new LlamaOptionsError(`gradients must be "adapters", "weights" or "none"`);
    }
    if (options.gradients === "adapters" && !options.adapters) {
      throw new LlamaOptionsError(`gradients "adapters" needs the adapters option`);
    }
    if (options.recompute !== undefined && typeof options.recompute !== "boolean") {
      throw new LlamaOptionsError(`recompute must be a boolean, got ${options.recompute}`);
    }
    const weightsDtype = options.weightsDtype ?? "f32";
    if (!WEIGHTS_DTYPES.includes(weightsDtype)) {
      throw new LlamaOptionsError(`weightsDtype must be f32, bf16 or f16, got ${weightsDtype}`);
    }
    if (weightsDtype !== "f32" && options.gradients === "weights") {
      throw new LlamaOptionsError(
        `weightsDtype ${weightsDtype} holds W in 16 bits; full-weight gradients need an f32 W ` +
          `(the optimizer updates it in place)`,
      );
    }
    if (options.trainable && options.gradients !== "weights") {
      throw new LlamaOptionsError(`trainable applies only to gradients "weights"`);
    }
    const gradNames = options.gradients === "weights"
      ? expectedTensors(config).map((s) => s.name).filter((n) => options.trainable?.(n) ?? true)
      : [];
    const paramOptions = { adapters: options.adapters, gradNames, weightsDtype };
    // W in host memory goes up the same way, a tensor at a time with the queue flushed after
    // each, so the queue's staging copies never add up to a second W.
    let streamed: ReadonlyMap<string, TensorRows>;
    if ("streamed" in weights) {
      streamed = weights.streamed;
    } else {
      const held = weights as ReadonlyMap<string, HostTensor>;
      checkWeights(config, held);
      streamed = hostRows(held);
    }
    const params = await LlamaParams.createStreamed(gpu, config, streamed, paramOptions);
    const held: GpuTensor[] = [];
    try {
      const model = new LlamaGpu(gpu, config, params, {
        maxRows: options.maxRows,
        seqLen: options.seqLen,
        maxMicroBatches,
        headChunk: headChunkOf(gpu, config, options),
        gradients: options.gradients,
        recompute: options.gradients !== "none" && (options.recompute ?? false),
        normOnLoad: options.normOnLoad ?? true,
        weightsDtype,
        adapters: options.adapters,
      }, held);
      // Surface an allocation failure here rather than at the first step.
      await gpu.sync();
      return model;
    } catch (e) {
      for (const t of held) if (t.allocation.alive) gpu.release(t);
      params.release();
      throw e;
    }
  }

  /** The live weight buffer of a tensor (HF name); optimizers may change it in place. */
  weight(name: string): GpuTensor {
    this.#check();
    const w = this.#params.weights.get(name);
    if (!w) {
      const parts = this.#params.rowParts.get(name);
      if (parts) {
        throw new LlamaWeightError(
          name,
          `"${name}" is split into ${parts.parts.length} row blocks (over the device's binding ` +
            `limit); use weightMatrix or weightParts`,
        );
      }
      throw new LlamaWeightError(name, `the model has no weight "${name}"`);
    }
    return w;
  }

  /**
   * A weight as the layers hold it: one tensor, or row blocks when it is over the device's
   * binding limit (optimizers and updates may change it in place, block by block).
   */
  weightMatrix(name: string): Matrix {
    this.#check();
    const m = this.#params.matrix(name);
    if (!m) throw new LlamaWeightError(name, `the model has no weight "${name}"`);
    return m;
  }

  /** ∂L/∂W of a trainable weight, split as the weight is. */
  weightGradMatrix(name: string): Matrix {
    this.#check();
    const g = this.#params.gradMatrix(name);
    if (!g) throw new LlamaWeightError(name, `"${name}" has no gradient (not trainable)`);
    return g;
  }

  /** The row blocks of a weight held as row blocks (the embedding table, the lm_head, any matrix over the binding limit). */
  weightParts(name: string): RowParts {
    this.#check();
    const p = this.#params.rowParts.get(name);
    if (!p) throw new LlamaWeightError(name, `"${name}" is not held as row blocks`);
    return p;
  }

  /** The row blocks of the gradient of the embedding table or the lm_head. */
  weightGradParts(name: string): RowParts {
    this.#check();
    const p = this.#params.gradParts.get(name);
    if (!p) throw new LlamaWeightError(name, `"${name}" has no gradient (not trainable)`);
    return p;
  }

  /** Every weight name, in checkpoint order. */
  weightNames(): string[] {
    return [...this.#params.names];
  }

  /** ∂L/∂W of a trainable weight (gradients "weights"). */
  weightGrad(name: string): GpuTensor {
    this.#check();
    const g = this.#params.grads.get(name);
    if (!g) {
      if (this.#params.gradParts.has(name)) {
        throw new LlamaWeightError(name, `the gradient of "${name}" is split; use weightGradParts`);
      }
      throw new LlamaWeightError(name, `"${name}" has no gradient (not trainable)`);
    }
    return g;
  }

  /** Names of the weights that have a gradient buffer. */
  trainableNames(): string[] {
    return this.#params.names.filter((n) =>
      this.#params.grads.has(n) || this.#params.gradParts.has(n)
    );
  }

  /** The adapter of an adapted weight (by its HF weight name). */
  adapter(name: string): AdapterBuffers {
    this.#check();
    const a = this.#params.adapters.get(name);
    if (!a) throw new LlamaWeightError(name, `"${name}" has no adapter`);
    return a;
  }

  /** Adapted weight names, in model order. */
  adapterNames(): string[] {
    return [...this.#params.adapters.keys()];
  }

  /** Uploads an adapter's factors A [r, in] and B [out, r] (queue-ordered before later work). */
  writeAdapter(name: string, A: Float32Array, B: Float32Array): void {
    const a = this.adapter(name);
    for (const [what, t, data] of [["A", a.A, A], ["B", a.B, B]] as const) {
      if (data.length !== t.size) {
        throw new LlamaWeightError(
          name,
          `adapter ${what} of "${name}" needs ${t.size} values [${t.shape}], got ${data.length}`,
        );
      }
    }
    this.gpu.write(a.A, A);
    this.gpu.write(a.B, B);
  }

  /**
   * Sets σ (forward adapter scale) and s (gradient scale alpha/r) for the next recordings.
   * σ = 0 is the exact mute; σ = s is LoRA/PiSSA. With `gamma`, the numeric mute: σ must be
   * f32(γ·s) and the backward follows docs/architecture.md §2's γ path (dH = σ·dY, gradients times f32(1/γ)).
   * `rescale` (only with `gamma`) replaces f32(1/γ) by a fixed multiplier (the mute ablation).
   */
  setAdapterScales(
    sigma: number,
    scale: number,
    options: { gamma?: number; rescale?: number } = {},
  ): void {
    if (!Number.isFinite(sigma) || !Number.isFinite(scale)) {
      throw new LlamaOptionsError(`adapter scales must be finite, got σ ${sigma}, s ${scale}`);
    }
    const gamma = options.gamma ?? null;
    if (gamma !== null) {
      if (!(gamma >= 1e-38 && gamma <= 1)) {
        throw new LlamaOptionsError(`numeric mute γ must lie in [1e-38, 1], got ${gamma}`);
      }
      if (Math.fround(sigma) !== Math.fround(gamma * scale)) {
        throw new LlamaOptionsError(`numeric mute: σ ${sigma} is not f32(γ·s) = ${gamma * scale}`);
      }
    }
    const rescale = options.rescale ?? null;
    if (rescale !== null && (gamma === null || !(Number.isFinite(rescale) && rescale > 0))) {
      throw new LlamaOptionsError(
        `a fixed gradient rescale needs a numeric mute γ and a finite positive value, got ` +
          `γ ${gamma}, rescale ${rescale}`,
      );
    }
    this.#scales = { sigma: Math.fround(sigma), scale, gamma, rescale };
  }

  /** The scales the next recording uses. */
  get adapterScales(): Readonly<AdapterScales> {
    return { ...this.#scales };
  }

  /**
   * Uploads a step's micro-batches (host writes; call before recording the step). Position t
   * of micro-batch b gets the loss weight 1/(targets in b · micro-batches with ≥ 1 target) when
   * token t+1 is a target, so the summed loss is docs/architecture.md §4's worker loss. Returns the weight
   * of each micro-batch (0 for one without targets).
   */
  setStepBatches(batches: readonly MicroBatch[]): number[] {
    this.#check();
    if (batches.length < 1 || batches.length > this.options.maxMicroBatches) {
      throw new LlamaInputError(
        `a step holds 1..${this.options.maxMicroBatches} micro-batches, got ${batches.length}`,
      );
    }
    const counts = batches.map((b, i) => this.#checkBatch(b, `micro-batch ${i}`));
    const nonEmpty = counts.filter((c) => c > 0).length;
    const weights = counts.map((c) => c > 0 ? Math.fround(1 / (c * nonEmpty)) : 0);
    this.#active = [];
    batches.forEach((b, i) => {
      const slot = this.#slots[i];
      this.#writeInputs(slot, b, weights[i]);
      if (counts[i] > 0) {
        slot.plan?.set(b.ids);
        this.#active.push(i);
      }
    });
    return weights;
  }

  /**
   * Records a training step: zero the gradients and the loss, then forward and backward of
   * every micro-batch of `setStepBatches` that has a target, accumulating into the gradients
   * and `loss`.
   */
  recordForwardBackward(rec: Recorder): void {
    this.#check();
    if (!this.#grads) {
      throw new LlamaOptionsError(`recordForwardBackward needs gradients, the model has "none"`);
    }
    for (const g of this.#params.allGrads()) fill(rec, g, 0);
    fill(rec, this.loss, 0);
    for (const i of this.#active) {
      const slot = this.#slots[i];
      this.#recordForward(rec, slot, true);
      this.#recordBackward(rec, slot);
    }
  }

  /** Records the loss of the step's micro-batches only (no gradients), e.g. for evaluation. */
  recordForward(rec: Recorder): void {
    this.#check();
    fill(rec, this.loss, 0);
    for (const i of this.#active) this.#recordForward(rec, this.#slots[i], false);
  }

  /** Logits [rows·S, V] of a batch (one submit, a chunk of positions at a time; does not disturb the step's inputs). */
  async logits(batch: MicroBatch): Promise<Float32Array> {
    this.#check();
    this.#checkBatch(batch, "batch");
    this.#writeInputs(this.#inference, batch, 0);
    const T = this.#inference.count;
    const V = this.#dims.V;
    const out = new Float32Array(T * V);
    const chunks = this.#chunks(T);
    // One submit per chunk after the first: the chunk buffer is reused.
    for (let c = 0; c < chunks.length; c++) {
      const [c0, n] = chunks[c];
      const rec = this.gpu.record({ label: "logits" });
      let read: Promise<Float32Array | Int32Array>;
      try {
        const ctx = this.#ctx(false);
        if (c === 0) {
          this.#forwardLayers(rec, this.#inference);
          this.#finalNorm(rec, T);
        }
        const logits = this.#head.logits.rows(0, n);
        headLogits(rec, ctx, lmHeadName(this.config), logits, this.#head.lnf.rows(c0, n));
        read = rec.read(logits);
      } catch (e) {
        rec.discard();
        throw e;
      }
      await rec.submit();
      out.set((await read) as Float32Array, c0 * V);
    }
    return out;
  }

  /**
   * Greedy decoding with a KV cache, `batchSize` prompts at a time (prompts may differ in
   * length). Each sequence stops at a stop id or after `maxNewTokens`; returns only the new
   * tokens (a stop id included).
   */
  generate(prompts: readonly (readonly number[])[], options: GenerateOptions): Promise<number[][]> {
    this.#check();
    return generateGreedy(this.gpu, this.config, this.#ctx(false), prompts, options);
  }

  /** Every weight read back (HF names), e.g. to save a model folder or a checkpoint. */
  async readWeights(): Promise<Map<string, HostTensor>> {
    this.#check();
    const names = this.weightNames();
    const ts = names.flatMap((n) =>
      this.#params.weights.get(n) ?? this.#params.rowParts.get(n)!.parts
    );
    const data = await this.gpu.readMany(ts);
    const out = new Map<string, HostTensor>();
    let at = 0;
    for (const n of names) {
      const w = this.#params.weights.get(n);
      if (w) {
        out.set(n, { shape: [...w.shape], data: data[at++] as Float32Array });
        continue;
      }
      const r = this.#params.rowParts.get(n)!;
      const whole = new Float32Array(r.rows * r.cols);
      for (let i = 0; i < r.parts.length; i++) whole.set(data[at++], r.starts[i] * r.cols);
      out.set(n, { shape: [r.rows, r.cols], data: whole });
    }
    return out;
  }

  /**
   * Overwrites one weight (queue-ordered before later submits). A 16-bit weight gets the values
   * rounded to nearest even (an f16 overflow is refused with LlamaWeightError).
   */
  writeWeight(name: string, data: Float32Array): void {
    this.#check();
    const r = this.#params.rowParts.get(name);
    const size = r ? r.rows * r.cols : this.weight(name).size;
    if (!(data instanceof Float32Array) || data.length !== size) {
      throw new LlamaWeightError(name, `"${name}" needs ${size} f32 values, got ${data?.length}`);
    }
    const dtype = r ? r.parts[0].dtype : this.weight(name).dtype;
    const values = isHalf(dtype) ? halfBits(name, data, dtype) : data;
    if (!r) return this.gpu.write(this.weight(name), values);
    r.parts.forEach((t, i) =>
      this.gpu.write(
        t,
        values.subarray(r.starts[i] * r.cols, (r.starts[i] + r.counts[i]) * r.cols),
      )
    );
  }

  /** Releases every buffer of the model (the Gpu stays open). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#tensors) if (t.allocation.alive) this.gpu.release(t);
    this.#tensors = [];
    this.#params.release();
  }

  // ---- internals --------------------------------------------------------------------------

  #check(): void {
    if (this.#closed) throw new LlamaOptionsError("the model was closed");
    this.gpu.check();
  }

  #ctx(training = true): BlockContext {
    return {
      dims: this.#dims,
      params: this.#params,
      scales: this.#scales,
      adapterGrads: training && this.#grads !== null && this.#params.adapters.size > 0,
      scratch: this.#scratch,
      splitBlock: this.#splitBlock,
    };
  }

  /** Checks a micro-batch against the model and returns its number of targets. */
  #checkBatch(b: MicroBatch, what: string): number {
    const { maxRows, seqLen } = this.options;
    if (!Number.isInteger(b.rows) || b.rows < 1 || b.rows > maxRows) {
      throw new LlamaInputError(`${what}: ${b.rows} rows, the model holds 1..${maxRows}`);
    }
    if (b.seqLen !== seqLen) {
      throw new LlamaInputError(`${what}: sequence length ${b.seqLen}, the model's is ${seqLen}`);
    }
    const n = b.rows * seqLen;
    if (!(b.ids instanceof Int32Array) || b.ids.length !== n) {
      throw new LlamaInputError(`${what}: ids must be an Int32Array of ${n} (rows·seqLen)`);
    }
    if (!(b.targetMask instanceof Uint8Array) || b.targetMask.length !== n) {
      throw new LlamaInputError(`${what}: targetMask must be a Uint8Array of ${n}`);
    }
    const V = this.config.vocab_size;
    let count = 0;
    for (let i = 0; i < n; i++) {
      const id = b.ids[i];
      if (id < 0 || id >= V) {
        throw new LlamaInputError(
          `${what}: token id ${id} at row ${Math.floor(i / seqLen)}, position ${i % seqLen} ` +
            `is outside the vocabulary [0, ${V})`,
        );
      }
      if (i % seqLen !== 0 && b.targetMask[i]) count++;
    }
    return count;
  }

  #writeInputs(slot: Slot, b: MicroBatch, weight: number): void {
    const Tm = this.options.maxRows * this.options.seqLen;
    const S = this.options.seqLen;
    const n = b.rows * S;
    const ids = new Int32Array(Tm);
    ids.set(b.ids);
    const targets = new Int32Array(Tm);
    const weights = new Float32Array(Tm);
    for (let t = 0; t < n; t++) {
      if ((t + 1) % S !== 0 && b.targetMask[t + 1]) {
        targets[t] = b.ids[t + 1];
        weights[t] = weight;
      }
    }
    this.gpu.write(slot.ids, ids);
    this.gpu.write(slot.targets, targets);
    this.gpu.write(slot.weights, weights);
    slot.rows = b.rows;
    slot.count = n;
  }

  #attention(rows: number): Attention {
    const d = this.#dims;
    const S = this.options.seqLen;
    const shape = {
      batch: rows,
      seqLen: S,
      nHeads: d.H,
      nKvHeads: d.KV,
      headDim: d.D,
      window: d.window,
    };
    return {
      positions: this.#positions.rows(0, rows * S),
      rope: this.#rope,
      shape: { batch: rows, seqLen: S },
      forward: (rec, _l, out, lse, q, k, v) => attentionForward(rec, { out, lse, q, k, v }, shape),
    };
  }

  #layerView(l: number, T: number, keepXa: boolean): LayerActs {
    return layerActsRows(this.#layers[l], T, keepXa);
  }

  #headView(T: number): HeadActs {
    const h = this.#head;
    return {
      x: h.x.rows(0, T),
      lnf: h.lnf.rows(0, T),
      rstdf: h.rstdf.rows(0, T),
      logits: h.logits,
    };
  }

  /** Embedding and every decoder layer of a slot's tokens. */
  #forwardLayers(rec: Recorder, slot: Slot, training = false): void {
    const T = slot.count;
    const ctx = this.#ctx(training);
    const keepXa = ctx.adapterGrads || this.#scales.sigma !== 0;
    const attn = this.#attention(slot.rows);
    embeddingForwardParts(
      rec,
      this.#layers[0].x.rows(0, T),
      this.#params.rowParts.get("model.embed_tokens.weight")!,
      slot.ids.rows(0, T),
    );
    for (let l = 0; l < this.#dims.L; l++) {
      layerForward(rec, ctx, l, this.#layerView(l, T, keepXa), attn);
    }
  }

  /** The final RMSNorm of the first T positions, into the head's input `lnf`. */
  #finalNorm(rec: Recorder, T: number): void {
    const h = this.#head;
    rmsnormForward(
      rec,
      h.lnf.rows(0, T),
      h.rstdf.rows(0, T),
      h.x.rows(0, T),
      this.#params.weights.get("model.norm.weight")!,
      this.#dims.eps,
    );
  }

  /** [first position, count] of each chunk of the head over T positions. */
  #chunks(T: number): [number, number][] {
    const C = this.options.headChunk;
    const out: [number, number][] = [];
    for (let c0 = 0; c0 < T; c0 += C) out.push([c0, Math.min(C, T - c0)]);
    return out;
  }

  /**
   * Forward to the loss. The head runs a chunk of positions at a time: logits of the chunk →
   * cross-entropy (losses, and ∂L/∂logits in place when training) → at once the lm_head's
   * backward of the chunk (∂L/∂lnf rows into the gradient buffer `dln`, ∂W accumulated), so the
   * whole [T, V] logits never exist.
   */
  #recordForward(rec: Recorder, slot: Slot, withGrad: boolean): void {
    const T = slot.count;
    this.#forwardLayers(rec, slot, withGrad);
    const ctx = this.#ctx(withGrad);
    const h = this.#head;
    const lm = lmHeadName(this.config);
    this.#finalNorm(rec, T);
    for (const [c0, n] of this.#chunks(T)) {
      const logits = h.logits.rows(0, n);
      const lnf = h.lnf.rows(c0, n);
      headLogits(rec, ctx, lm, logits, lnf);
      crossEntropy(rec, {
        logits,
        targets: slot.targets.rows(c0, n),
        weights: slot.weights.rows(c0, n),
        losses: this.#losses.rows(c0, n),
        dlogits: withGrad ? logits : undefined,
      });
      if (withGrad) headLogitsBackward(rec, ctx, lm, this.#grads!.dln.rows(c0, n), logits, lnf);
    }
    sum(rec, this.#mbLoss, this.#losses.rows(0, T));
    accumulate(rec, this.loss, this.#mbLoss);
  }

  #recordBackward(rec: Recorder, slot: Slot): void {
    const T = slot.count;
    const ctx = this.#ctx(true);
    const G = this.#grads!;
    const v = (t: GpuTensor) => t.rows(0, T);
    const g: LayerGrads = {
      dx: v(G.dx),
      dln: v(G.dln),
      dh: v(G.dh),
      dgate: v(G.dgate),
      dup: v(G.dup),
      dao: v(G.dao),
      dq: v(G.dq),
      dk: v(G.dk),
      dv: v(G.dv),
      delta: v(G.delta),
    };
    const L = this.#dims.L;
    // The lm_head's backward ran with the loss (#recordForward) and left ∂L/∂lnf in g.dln.
    headNormBackward(rec, ctx, this.#headView(T), g, this.#stop < L);
    const attn = this.#attention(slot.rows);
    const keepXa = ctx.adapterGrads || this.#scales.sigma !== 0;
    for (let l = L - 1; l >= this.#stop; l--) {
      // With recomputation the shared activations hold the last layer's forward; every other
      // layer's are recomputed from its kept input, as #forwardLayers computed them.
      if (this.options.recompute && l < L - 1) {
        layerForward(rec, ctx, l, this.#layerView(l, T, keepXa), attn);
      }
      const inputGrad = l > this.#stop || this.#embedGrad;
      layerBackward(rec, ctx, l, this.#layerView(l, T, ctx.adapterGrads), g, attn, inputGrad);
    }
    if (this.#embedGrad) {
      embeddingBackwardParts(
        rec,
        this.#params.gradParts.get("model.embed_tokens.weight")!,
        g.dx,
        slot.plan!,
        true,
      );
    }
  }
}

/**
 * What a method does on one GPU worker (docs/architecture.md §2): turn a step's micro-batches into the
 * contribution the driver gathers, and apply the update the driver broadcasts.
 *
 * - HD-PiSSA: the worker's own slice (A_k, B_k) gives adapter gradients; its optimizer turns them
 *   into signed steps (ΔA_k, ΔB_k) without ever changing A_k, B_k; the update is all K steps,
 *   applied to W as `W += c·s·Σ_j (B_j+ΔB_j)(A_j+ΔA_j) − B_j A_j`.
 * - LoRA / PiSSA: one shared adapter trained data-parallel: the contribution is the adapter
 *   gradient, the update their mean, applied by the same optimizer step on every worker.
 * - Full: the same with the weights' own gradients.
 * @module
 */
import { DomainError } from "../../core/errors.ts";
import {
  adamwDelta,
  adamwUpdate,
  clipByGlobalNorm,
  type Gpu,
  type GpuTensor,
  hdPissaUpdate,
  matmulNN,
  type Recorder,
  sgdDelta,
  sgdUpdate,
  sumSquares,
} from "../../gpu/mod.ts";
import type { LinearKind } from "../../model/config.ts";
import type { LlamaGpu } from "../../model/llama.ts";
import type { HostTensor } from "../../model/safetensors.ts";
import type { MicroBatch } from "../../model/batch.ts";
import type { AdapterFactors } from "./adapter_init.ts";
import type { MethodInit } from "./init.ts";
import { contributionLayout, fullTrainableDefault, type Layout } from "./layout.ts";
import type { Method } from "../cli/options.ts";

export interface WorkerMethodConfig {
  method: Method;
  workers: number;
  rank: number;
  alpha: number;
  targets: readonly LinearKind[];
  mute: "exact" | number;
  aggregate: "mean" | "sum";
  optimizer: "adamw" | "sgd";
  weightDecay: number;
  /** Global-norm clip; 0 = off. */
  clip: number;
  /** `full`: the weights that train. */
  trainable?: (name: string) => boolean;
}

/** A bad update or state handed to a worker. */
export class WorkerStateError extends DomainError {
  static override readonly code: string = "WORKER_STATE";
}

export interface StepResult {
  /** The worker's loss (docs/architecture.md §4). */
  loss: number;
  contribution: Float32Array;
  /** Wall time of the step on this worker: forward, backward, optimizer and read-back. */
  ms: number;
  /** Device time of the step when the device has timestamp queries. */
  gpuMs: number | null;
}

/** The options LlamaGpu must be created with for a method. */
export function modelOptionsFor(c: WorkerMethodConfig): {
  adapters?: { targets: readonly LinearKind[]; rank: number };
  gradients: "adapters" | "weights";
  trainable?: (name: string) => boolean;
} {
  if (c.method === "full") {
    return { gradients: "weights", trainable: c.trainable ?? fullTrainableDefault };
  }
  return { adapters: { targets: c.targets, rank: c.rank }, gradients: "adapters" };
}

interface Moments {
  param: GpuTensor;
  grad: GpuTensor;
  m: GpuTensor;
  v: GpuTensor;
  /** Checkpoint name of the moments, e.g. `model.layers.0.mlp.up_proj.weight.A`. */
  key: string;
}

/** The state every worker keeps in common with the driver's checkpoint. */
export interface WorkerState {
  /** Optimizer steps taken (AdamW's bias-correction counter). */
  optimizerStep: number;
  /** `<key>.m` and `<key>.v` for every optimised tensor. */
  moments: Map<string, HostTensor>;
}

export abstract class WorkerMethod {
  readonly layout: Layout;
  readonly gpu: Gpu;
  protected optimizerStep = 0;
  protected moments: Moments[] = [];
  #sumSq: GpuTensor | null = null;
  #partials: GpuTensor | null = null;

  constructor(readonly model: LlamaGpu, readonly config: WorkerMethodConfig) {
    this.gpu = model.gpu;
    this.layout = contributionLayout(model.config, {
      method: config.method,
      targets: config.targets,
      rank: config.rank,
      trainable: config.trainable,
    });
  }

  /** Floats of optimizer state this worker holds. */
  get optimizerFloats(): number {
    return this.moments.reduce((n, m) => n + m.m.size + m.v.size, 0);
  }

  /** Runs the step's forward/backward and the worker-local part of the optimizer. */
  abstract step(batches: MicroBatch[], lr: number): Promise<StepResult>;

  /** Applies the driver's combined update; returns its wall time in ms. */
  abstract apply(update: Float32Array, lr: number): Promise<number>;

  /** Makes the model's weights the merged, exportable ones (LoRA/PiSSA fold s·B·A into W). */
  abstract merge(): Promise<void>;

  /**
   * Takes the trained adapter of another worker. HD-PiSSA's adapters never change, so only
   * the data-parallel methods have one.
   */
  setTrainedAdapters(_tensors: ReadonlyMap<string, HostTensor>): void {}

  protected addMoments(param: GpuTensor, grad: GpuTensor, key: string): void {
    this.moments.push({
      param,
      grad,
      key,
      m: this.gpu.zeros([...param.shape], "f32", `${key}.m`),
      v: this.gpu.zeros([...param.shape], "f32", `${key}.v`),
    });
  }

  /** Clip the gradients by their global norm (PyTorch's formula), on the device. */
  protected recordClip(rec: Recorder, grads: GpuTensor[]): void {
    if (!(this.config.clip > 0)) return;
    this.#sumSq ??= this.gpu.tensor([1], "f32", "clip.sumsq");
    if (!this.#partials || this.#partials.size !== grads.length) {
      this.#partials = this.gpu.tensor([grads.length], "f32", "clip.partials");
    }
    sumSquares(rec, this.#sumSq, this.#partials, grads);
    clipByGlobalNorm(rec, grads, this.#sumSq, this.config.clip);
  }

  /** Optimizer step of one tensor: into `delta` (HD-PiSSA) or in place. */
  protected recordOptimizer(rec: Recorder, m: Moments, lr: number, delta: GpuTensor | null): void {
    const wd = this.config.weightDecay;
    if (this.config.optimizer === "adamw") {
      const h = { lr, step: this.optimizerStep, weightDecay: wd };
      if (delta) adamwDelta(rec, m, delta, h);
      else adamwUpdate(rec, m, h);
    } else {
      if (delta) sgdDelta(rec, delta, m.param, m.grad, { lr, weightDecay: wd });
      else sgdUpdate(rec, m.param, m.grad, { lr, weightDecay: wd });
    }
  }

  /** The optimizer state, for a checkpoint. */
  async state(): Promise<WorkerState> {
    const flat = this.moments.flatMap((m) => [m.m, m.v]);
    const data = await this.gpu.readMany(flat);
    const moments = new Map<string, HostTensor>();
    this.moments.forEach((m, i) => {
      moments.set(`${m.key}.m`, { shape: [...m.m.shape], data: data[2 * i] as Float32Array });
      moments.set(`${m.key}.v`, { shape: [...m.v.shape], data: data[2 * i + 1] as Float32Array });
    });
    return { optimizerStep: this.optimizerStep, moments };
  }

  /** Restores the optimizer state saved by `state()`. */
  restoreState(s: WorkerState): void {
    if (!Number.isInteger(s.optimizerStep) || s.optimizerStep < 0) {
      throw new WorkerStateError(`bad optimizer step ${s.optimizerStep}`);
    }
    for (const m of this.moments) {
      for (const [part, t] of [["m", m.m], ["v", m.v]] as const) {
        const h = s.moments.get(`${m.key}.${part}`);
        if (!h || h.data.length !== t.size) {
          throw new WorkerStateError(
            `optimizer state ${m.key}.${part}: ${
              h ? `${h.data.length} floats, expected ${t.size}` : "missing"
            }`,
          );
        }
        this.gpu.write(t, h.data);
      }
    }
    this.optimizerStep = s.optimizerStep;
  }

  /** Copies the flat segments of `c` into the given device tensors (same order as the layout). */
  protected writeSegments(c: Float32Array, offset: number, targets: GpuTensor[]): void {
    this.layout.segments.forEach((seg, i) => {
      this.gpu.write(targets[i], c.subarray(offset + seg.offset, offset + seg.offset + seg.length));
    });
  }

  protected checkUpdate(update: Float32Array, expected: number): void {
    if (!(update instanceof Float32Array) || update.length !== expected) {
      throw new WorkerStateError(
        `update has ${update?.length ?? "no"} floats, expected ${expected}`,
      );
    }
  }

  /** Runs the step's micro-batches and reads the loss and the given tensors back, concatenated. */
  protected async runStep(
    batches: MicroBatch[],
    after: (rec: Recorder) => void,
    outputs: GpuTensor[],
  ): Promise<StepResult> {
    const t0 = performance.now();
    this.model.setStepBatches(batches);
    const rec = this.gpu.record({ label: "step" });
    this.model.recordForwardBackward(rec);
    after(rec);
    const loss = rec.read(this.model.loss);
    const reads = outputs.map((t) => rec.read(t));
    const res = await rec.submit();
    const contribution = new Float32Array(this.layout.length);
    const parts = await Promise.all(reads);
    this.layout.segments.forEach((seg, i) =>
      contribution.set(parts[i] as Float32Array, seg.offset)
    );
    return {
      loss: (await loss)[0],
      contribution,
      ms: performance.now() - t0,
      gpuMs: res.gpuMs,
    };
  }
}

/** HD-PiSSA on worker k. */
export class HdPissaWorker extends WorkerMethod {
  /** Per adapted weight: the K pairs with their step buffers, in worker order. */
  #pairs = new Map<string, { A: GpuTensor; B: GpuTensor; dA: GpuTensor; dB: GpuTensor }[]>();
  #scratch = new Map<string, { L: GpuTensor; R: GpuTensor }>();

  constructor(
    model: LlamaGpu,
    config: WorkerMethodConfig,
    readonly worker: number,
    init: MethodInit,
  ) {
    super(model, config);
    const { rank: r, workers: K } = config;
    if (!(worker >= 0 && worker < K)) throw new WorkerStateError(`worker ${worker} of ${K}`);
    const s = config.alpha / r;
    if (config.mute === "exact") model.setAdapterScales(0, s);
    else model.setAdapterScales(Math.fround(config.mute * s), s, { gamma: config.mute });
    for (const name of model.adapterNames()) {
      const slices = init.factors.get(name);
      if (!slices || slices.length !== K) {
        throw new WorkerStateError(
          `${name}: expected ${K} adapter slices, got ${slices?.length ?? 0}`,
        );
      }
      const W = model.weight(name);
      const [out, inn] = W.shape;
      const pairs = slices.map((f: AdapterFactors, j) => ({
        A: this.gpu.upload(f.A, [r, inn], `${name}.A${j}`),
        B: this.gpu.upload(f.B, [out, r], `${name}.B${j}`),
        dA: this.gpu.zeros([r, inn], "f32", `${name}.dA${j}`),
        dB: this.gpu.zeros([out, r], "f32", `${name}.dB${j}`),
      }));
      this.#pairs.set(name, pairs);
      const own = model.adapter(name);
      this.gpu.write(own.A, slices[worker].A);
      this.gpu.write(own.B, slices[worker].B);
      this.addMoments(own.A, own.gA, `${name}.A`);
      this.addMoments(own.B, own.gB, `${name}.B`);
      const key = `${out}x${inn}`;
      if (!this.#scratch.has(key)) {
        this.#scratch.set(key, {
          L: this.gpu.tensor([out, 2 * K * r], "f32", `L ${key}`),
          R: this.gpu.tensor([2 * K * r, inn], "f32", `R ${key}`),
        });
      }
    }
  }

  /** The step buffers of worker j, in layout order (dA, dB per adapted weight). */
  #deltas(j: number): GpuTensor[] {
    return [...this.#pairs.values()].flatMap((p) => [p[j].dA, p[j].dB]);
  }

  step(batches: MicroBatch[], lr: number): Promise<StepResult> {
    this.optimizerStep++;
    const grads = this.moments.map((m) => m.grad);
    const deltas = this.#deltas(this.worker);
    return this.runStep(batches, (rec) => {
      this.recordClip(rec, grads);
      this.moments.forEach((m, i) => this.recordOptimizer(rec, m, lr, deltas[i]));
    }, deltas);
  }

  async apply(update: Float32Array): Promise<number> {
    const K = this.config.workers;
    this.checkUpdate(update, this.layout.length * K);
    const t0 = performance.now();
    for (let j = 0; j < K; j++) this.writeSegments(update, j * this.layout.length, this.#deltas(j));
    const rec = this.gpu.record({ label: "update" });
    const c = this.config.aggregate === "mean" ? 1 / K : 1;
    const s = this.config.alpha / this.config.rank;
    for (const [name, pairs] of this.#pairs) {
      const W = this.model.weight(name);
      const { L, R } = this.#scratch.get(`${W.shape[0]}x${W.shape[1]}`)!;
      hdPissaUpdate(rec, W, pairs, L, R, { c, s });
    }
    await rec.submit();
    return performance.now() - t0;
  }

  merge(): Promise<void> {
    return Promise.resolve(); // W is the model.
  }

  /** All K adapter pairs (for checkpoints: A_j, B_j never change). */
  async adapters(): Promise<Map<string, HostTensor>> {
    const out = new Map<string, HostTensor>();
    const names: string[] = [];
    const ts: GpuTensor[] = [];
    for (const [name, pairs] of this.#pairs) {
      pairs.forEach((p, j) => {
        names.push(`${name}.A${j}`, `${name}.B${j}`);
        ts.push(p.A, p.B);
      });
    }
    const data = await this.gpu.readMany(ts);
    names.forEach((n, i) => out.set(n, { shape: [...ts[i].shape], data: data[i] as Float32Array }));
    return out;
  }
}

/** LoRA, PiSSA and full fine-tuning: data-parallel, every worker takes the same step. */
export class DataParallelWorker extends WorkerMethod {
  #grads: GpuTensor[] = [];

  constructor(model: LlamaGpu, config: WorkerMethodConfig, init: MethodInit) {
    super(model, config);
    if (config.method === "hd-pissa") throw new WorkerStateError("hd-pissa is not data-parallel");
    if (config.method === "full") {
      for (const seg of this.layout.segments) {
        this.addMoments(model.weight(seg.name), model.weightGrad(seg.name), seg.name);
      }
    } else {
      const s = config.alpha / config.rank;
      model.setAdapterScales(s, s);
      for (const name of model.adapterNames()) {
        const f = init.factors.get(name)?.[0];
        if (!f) throw new WorkerStateError(`${name}: no initial adapter`);
        const a = model.adapter(name);
        this.gpu.write(a.A, f.A);
        this.gpu.write(a.B, f.B);
        const res = init.residuals.get(name);
        if (config.method === "pissa") {
          if (!res) throw new WorkerStateError(`${name}: PiSSA needs its residual weight`);
          model.writeWeight(name, res);
        }
        this.addMoments(a.A, a.gA, `${name}.A`);
        this.addMoments(a.B, a.gB, `${name}.B`);
      }
    }
    this.#grads = this.moments.map((m) => m.grad);
  }

  step(batches: MicroBatch[]): Promise<StepResult> {
    return this.runStep(batches, () => {}, this.#grads);
  }

  async apply(update: Float32Array, lr: number): Promise<number> {
    this.checkUpdate(update, this.layout.length);
    const t0 = performance.now();
    this.optimizerStep++;
    this.writeSegments(update, 0, this.#grads);
    const rec = this.gpu.record({ label: "update" });
    this.recordClip(rec, this.#grads);
    for (const m of this.moments) this.recordOptimizer(rec, m, lr, null);
    await rec.submit();
    return performance.now() - t0;
  }

  async merge(): Promise<void> {
    if (this.config.method === "full") return;
    const s = this.config.alpha / this.config.rank;
    const rec = this.gpu.record({ label: "merge" });
    for (const name of this.model.adapterNames()) {
      const a = this.model.adapter(name);
      matmulNN(rec, this.model.weight(name), a.B, a.A, { alpha: s, beta: 1 });
    }
    await rec.submit();
    // The adapter is folded in: the forward must no longer add it.
    this.model.setAdapterScales(0, s);
  }

  /** The trained adapter (identical on every worker), for checkpoints. */
  async adapters(): Promise<Map<string, HostTensor>> {
    const out = new Map<string, HostTensor>();
    if (this.config.method === "full") return out;
    for (const name of this.model.adapterNames()) {
      const a = this.model.adapter(name);
      const [A, B] = await this.gpu.readMany([a.A, a.B]);
      out.set(`${name}.A0`, { shape: [...a.A.shape], data: A as Float32Array });
      out.set(`${name}.B0`, { shape: [...a.B.shape], data: B as Float32Array });
    }
    return out;
  }

  /** Overwrites the trained adapter with another worker's (re-synchronising mixed devices). */
  override setTrainedAdapters(tensors: ReadonlyMap<string, HostTensor>): void {
    if (this.config.method === "full") return;
    for (const name of this.model.adapterNames()) {
      const A = tensors.get(`${name}.A0`), B = tensors.get(`${name}.B0`);
      if (!A || !B) throw new WorkerStateError(`${name}: the adapter to copy is missing`);
      this.model.writeAdapter(name, A.data, B.data);
    }
  }
}

/** The worker-side method for `config.method`. */
export function createWorkerMethod(
  model: LlamaGpu,
  config: WorkerMethodConfig,
  worker: number,
  init: MethodInit,
): HdPissaWorker | DataParallelWorker {
  return config.method === "hd-pissa"
    ? new HdPissaWorker(model, config, worker, init)
    : new DataParallelWorker(model, config, init);
}

/**
 * What a method does on one GPU worker (docs/architecture.md §2): turn a step's micro-batches into the
 * contribution the driver gathers, and apply the update the driver broadcasts. This file holds
 * the part every method shares (optimizer moments, clipping, the step's read-back, state for
 * checkpoints); each method's file holds its own subclass (`hd_pissa.ts`, `data_parallel.ts`,
 * `full.ts`).
 * @module
 */
import type { WorkerSettings } from "../cli/finetune_flags.ts";
import { DomainError } from "../../core/errors.ts";
import {
  adamwDelta,
  adamwUpdate,
  clipByGlobalNorm,
  type Gpu,
  type GpuTensor,
  type Recorder,
  sgdDelta,
  sgdUpdate,
  sumSquares,
} from "../../gpu/mod.ts";
import type { LlamaGpu, LlamaGpuOptions } from "../../model/llama.ts";
import type { HostTensor } from "../../model/safetensors.ts";
import type { MicroBatch } from "../../model/batch.ts";
import type { Layout } from "./layout.ts";

/**
 * What a method's worker reads: the run's flags marked `toWorkers` in train/cli/finetune_flags.ts
 * (less `device`, `recompute` and `weightsDtype`, which the worker's actor uses to open its GPU
 * and build the model), with the method by name. `muteRescale` and `sliceScale` (the study's
 * ablations) may be left out by callers that build a config by hand: absent means the flags'
 * defaults, `inverse` and `svd`, the method as published.
 */
export type WorkerMethodConfig =
  & Omit<
    WorkerSettings,
    "device" | "method" | "recompute" | "weightsDtype" | "muteRescale" | "sliceScale"
  >
  & Partial<Pick<WorkerSettings, "muteRescale" | "sliceScale">>
  & {
    /** The method's name (the worker finds the method by it). */
    method: string;
    /** `full`: the weights that train. */
    trainable?: (name: string) => boolean;
  };

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

/** The options a method gives LlamaGpu (besides the sizes the worker chooses). */
export type ModelOptions = Pick<LlamaGpuOptions, "adapters" | "gradients" | "trainable">;

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

/**
 * What must be the same on every worker besides W (docs/architecture.md §6, "Keeping the shared
 * state equal"): the driver's checksums cover it, and a tolerant re-synchronisation copies it
 * from worker 0. A method's value and its worker class declare the same spec.
 */
export interface SharedStateSpec {
  /**
   * The adapters of `adapters()`: all K fixed pairs A_j, B_j (HD-PiSSA), the one trained adapter
   * (LoRA, PiSSA), none (full).
   */
  adapters: boolean;
  /**
   * The optimizer moments and step counter: the same on every worker when every worker takes
   * the same optimizer step (data-parallel), each worker's own otherwise (HD-PiSSA).
   */
  optimizer: boolean;
}

/** The shared state of a worker besides W, read from its device. */
export interface SharedState {
  /** Adapters (`<weight>.A<j>`, `<weight>.B<j>`) and moments (`<key>.m`, `<key>.v`). */
  tensors: Map<string, HostTensor>;
  /** The optimizer's step counter when it is shared, else null. */
  optimizerStep: number | null;
}

/** Where a layout segment lives on the device: one tensor, or the row blocks of a split one. */
export type SegmentTarget = GpuTensor | readonly GpuTensor[];

function pieces(t: SegmentTarget): readonly GpuTensor[] {
  return Array.isArray(t) ? t : [t as GpuTensor];
}

export abstract class WorkerMethod {
  readonly layout: Layout;
  readonly gpu: Gpu;
  protected optimizerStep = 0;
  protected moments: Moments[] = [];
  #sumSq: GpuTensor | null = null;
  #partials: GpuTensor | null = null;

  constructor(readonly model: LlamaGpu, readonly config: WorkerMethodConfig, layout: Layout) {
    this.gpu = model.gpu;
    this.layout = layout;
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

  /** The adapters a checkpoint keeps (named as in `factors.ts`); none for full fine-tuning. */
  abstract adapters(): Promise<Map<string, HostTensor>>;

  /** Overwrites the adapters of `adapters()` with another worker's (named the same way). */
  protected abstract setAdapters(tensors: ReadonlyMap<string, HostTensor>): void;

  /** What of this worker's state must equal every other worker's (besides W). */
  abstract readonly shared: SharedStateSpec;

  /** The state that must be the same on every worker besides W, read from the device. */
  async sharedState(): Promise<SharedState> {
    const tensors = this.shared.adapters ? await this.adapters() : new Map<string, HostTensor>();
    if (!this.shared.optimizer) return { tensors, optimizerStep: null };
    const st = await this.state();
    for (const [k, t] of st.moments) tensors.set(k, t);
    return { tensors, optimizerStep: st.optimizerStep };
  }

  /** Takes another worker's shared state (a tolerant re-synchronisation). */
  setSharedState(s: SharedState): void {
    if (this.shared.optimizer) {
      this.restoreState({ optimizerStep: s.optimizerStep ?? NaN, moments: s.tensors });
    }
    if (this.shared.adapters) this.setAdapters(s.tensors);
  }

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

  /**
   * Copies the flat segments of `c` into the given device tensors (same order as the layout). A
   * segment's target may be a list: the row blocks of a split matrix, filled in order.
   */
  protected writeSegments(c: Float32Array, offset: number, targets: SegmentTarget[]): void {
    this.layout.segments.forEach((seg, i) => {
      let at = offset + seg.offset;
      for (const t of pieces(targets[i])) {
        this.gpu.write(t, c.subarray(at, at + t.size));
        at += t.size;
      }
      if (at !== offset + seg.offset + seg.length) {
        throw new WorkerStateError(
          `segment ${seg.name}: its tensors hold ${
            at - offset - seg.offset
          } of ${seg.length} floats`,
        );
      }
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
    outputs: SegmentTarget[],
  ): Promise<StepResult> {
    const t0 = performance.now();
    this.model.setStepBatches(batches);
    const rec = this.gpu.record({ label: "step" });
    this.model.recordForwardBackward(rec);
    after(rec);
    const loss = rec.read(this.model.loss);
    const reads = outputs.map((t) => pieces(t).map((p) => rec.read(p)));
    const res = await rec.submit();
    const contribution = new Float32Array(this.layout.length);
    for (const [i, seg] of this.layout.segments.entries()) {
      let at = seg.offset;
      for (const p of await Promise.all(reads[i])) {
        contribution.set(p as Float32Array, at);
        at += p.length;
      }
    }
    return {
      loss: (await loss)[0],
      contribution,
      ms: performance.now() - t0,
      gpuMs: res.gpuMs,
    };
  }
}

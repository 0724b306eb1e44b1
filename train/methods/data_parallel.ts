/**
 * The data-parallel methods (docs/architecture.md §2, the baselines): every worker holds the same trainable
 * tensors; the contribution is their gradient, the update the workers' mean, and every worker
 * takes the same optimizer step with it. LoRA and PiSSA train one shared adapter and differ only
 * in its init, so they are both made by `adapterMethod`; full fine-tuning (`full.ts`) trains the
 * weights themselves.
 * @module
 */
import {
  type GpuTensor,
  isHalf,
  isRowParts,
  matmulNN,
  matmulNNIntoRows,
  maxBlockRows,
} from "../../gpu/mod.ts";
import { adaptableLinears, type LlamaConfig } from "../../model/config.ts";
import type { LlamaGpu } from "../../model/llama.ts";
import type { HostTensor } from "../../model/safetensors.ts";
import type { MicroBatch } from "../../model/batch.ts";
import { meanContributions } from "./combine.ts";
import { factorKey, initFromTensors, initToTensors } from "./factors.ts";
import { initEachAdapted, type MatrixFactors, type MatrixInit, type MethodInit } from "./init.ts";
import { adapterLayout, type Layout } from "./layout.ts";
import { checkRankFits, type MethodSettings, type Traffic, type TrainingMethod } from "./method.ts";
import {
  type SegmentTarget,
  type SharedStateSpec,
  type StepResult,
  WorkerMethod,
  type WorkerMethodConfig,
  WorkerStateError,
} from "./worker.ts";

/**
 * The shared state of LoRA and PiSSA: every worker takes the same optimizer step on the same
 * mean, so the trained adapter, its moments and the step counter agree everywhere.
 */
export const ADAPTER_SHARED: SharedStateSpec = { adapters: true, optimizer: true };

/** A data-parallel worker: sends its gradients, applies the mean with its optimizer. */
export abstract class DataParallelWorker extends WorkerMethod {
  #grads: SegmentTarget[] = [];

  /**
   * Call once the moments are added: the gradients of the optimised tensors, in layout order
   * (`segments`: per layout segment, its gradient tensors, when a segment has several: the row
   * blocks of a split weight; default one moment per segment).
   */
  protected collectGradients(segments?: SegmentTarget[]): void {
    this.#grads = segments ?? this.moments.map((m) => m.grad);
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
    this.recordClip(rec, this.moments.map((m) => m.grad));
    for (const m of this.moments) this.recordOptimizer(rec, m, lr, null);
    await rec.submit();
    return performance.now() - t0;
  }
}

/**
 * One shared adapter (LoRA, PiSSA), trained data-parallel. `residual`: the init's residual
 * replaces W. An init without any residual is a restore: the checkpoint's W, as loaded, is
 * already the live (residual) weight.
 */
export class AdapterWorker extends DataParallelWorker {
  readonly shared: SharedStateSpec = ADAPTER_SHARED;

  constructor(
    model: LlamaGpu,
    config: WorkerMethodConfig,
    layout: Layout,
    init: MethodInit,
    residual: boolean,
  ) {
    super(model, config, layout);
    const s = config.alpha / config.rank;
    model.setAdapterScales(s, s);
    const replaceW = residual && init.residuals.size > 0;
    for (const name of model.adapterNames()) {
      const f = init.factors.get(name)?.[0];
      if (!f) throw new WorkerStateError(`${name}: no initial adapter`);
      const a = model.adapter(name);
      this.gpu.write(a.A, f.A);
      this.gpu.write(a.B, f.B);
      if (replaceW) {
        const res = init.residuals.get(name);
        if (!res) throw new WorkerStateError(`${name}: ${config.method} needs its residual weight`);
        model.writeWeight(name, res);
      }
      this.addMoments(a.A, a.gA, `${name}.A`);
      this.addMoments(a.B, a.gB, `${name}.B`);
    }
    this.collectGradients();
  }

  async merge(): Promise<void> {
    const s = this.config.alpha / this.config.rank;
    const rec = this.gpu.record({ label: "merge" });
    // A 16-bit W takes the product through an f32 scratch (matmul's 16-bit C); one per shape,
    // reused by every weight of that shape, instead of one per weight held until the submit.
    const scratch = new Map<string, GpuTensor>();
    for (const name of this.model.adapterNames()) {
      const a = this.model.adapter(name);
      const W = this.model.weightMatrix(name);
      if (isRowParts(W)) {
        // Over the binding limit: one product per row block, each through a block-sized scratch.
        let d: GpuTensor | undefined;
        if (isHalf(W.parts[0].dtype)) {
          const key = `rows ${maxBlockRows(W) * W.cols}`;
          d = scratch.get(key);
          if (!d) scratch.set(key, d = rec.scratch([maxBlockRows(W) * W.cols], "f32", key));
        }
        matmulNNIntoRows(rec, W, a.B, a.A, { alpha: s, scratch: d });
        continue;
      }
      let d: GpuTensor | undefined;
      if (isHalf(W.dtype)) {
        const key = W.shape.join("x");
        d = scratch.get(key);
        if (!d) scratch.set(key, d = rec.scratch([...W.shape], "f32", `merge ${key}`));
      }
      matmulNN(rec, W, a.B, a.A, { alpha: s, beta: 1, scratch: d });
    }
    await rec.submit();
    // The adapter is folded in: the forward must no longer add it.
    this.model.setAdapterScales(0, s);
  }

  /** The trained adapter (identical on every worker), for checkpoints. */
  async adapters(): Promise<Map<string, HostTensor>> {
    const out = new Map<string, HostTensor>();
    for (const name of this.model.adapterNames()) {
      const a = this.model.adapter(name);
      const [A, B] = await this.gpu.readMany([a.A, a.B]);
      out.set(factorKey(name, "A", 0), { shape: [...a.A.shape], data: A as Float32Array });
      out.set(factorKey(name, "B", 0), { shape: [...a.B.shape], data: B as Float32Array });
    }
    return out;
  }

  /** Overwrites the trained adapter with another worker's (re-synchronising mixed devices). */
  protected setAdapters(tensors: ReadonlyMap<string, HostTensor>): void {
    for (const name of this.model.adapterNames()) {
      const A = tensors.get(factorKey(name, "A", 0)), B = tensors.get(factorKey(name, "B", 0));
      if (!A || !B) throw new WorkerStateError(`${name}: the adapter to copy is missing`);
      this.model.writeAdapter(name, A.data, B.data);
    }
  }
}

/** The traffic of a data-parallel method: gradients out, their mean (the same size) back. */
export function meanTraffic(layout: Layout, what: string): Traffic {
  return {
    sent: 4 * layout.length,
    received: 4 * layout.length,
    expression: `sent ${what}; received their mean, the same size`,
  };
}

/** What distinguishes one data-parallel adapter method from another. */
export interface AdapterMethodSpec<N extends string> {
  name: N;
  summary: string;
  rankBoundLabel: string;
  /** The bound from r alone (first order). */
  rankBound: (rank: number) => number;
  color?: string;
  /** The factors of one matrix: `factors` holds the one shared adapter. */
  initMatrix: (m: MatrixInit, o: { rank: number; alpha: number }) => MatrixFactors;
  /** Singular triplets the init takes per matrix from r, when it uses the SVD (PiSSA: r). */
  svdComponents?: (rank: number) => number;
  /** Whether the init gives a residual that replaces W (PiSSA). */
  residual: boolean;
  initLog: (matrices: number) => string;
}

/**
 * A method that trains one rank-r adapter on every adapted weight, data-parallel, from the
 * given init: everything else (r ≤ min(in, out), layout, mean, worker) is shared.
 */
export function adapterMethod<const N extends string>(
  spec: AdapterMethodSpec<N>,
): TrainingMethod<N> {
  const matrices = (config: LlamaConfig, s: MethodSettings) =>
    adaptableLinears(config, s.targets).length;
  return {
    name: spec.name,
    summary: spec.summary,
    rankBoundLabel: spec.rankBoundLabel,
    rankBound: ({ rank }) => spec.rankBound(rank),
    color: spec.color,
    validate: (config, s) =>
      checkRankFits(spec.name, config, s.targets, s.rank, `--rank ${s.rank}`),
    layout: (config, o) => adapterLayout(config, o, ["gA", "gB"]),
    updateLength: (layout) => layout.length,
    combine: meanContributions,
    shared: ADAPTER_SHARED,
    traffic: (layout) => meanTraffic(layout, "4·Σ(in+out)·r bytes (adapter gradients)"),
    init: (config, weights, o, onProgress) =>
      initEachAdapted(config, weights, o, (m) => spec.initMatrix(m, o), onProgress),
    ...(spec.svdComponents ? { svdComponents: (s) => spec.svdComponents!(s.rank) } : {}),
    initLog: (config, s) => spec.initLog(matrices(config, s)),
    initToTensors,
    initFromTensors: (tensors) => initFromTensors(tensors, 1),
    modelOptions: (c) => ({
      adapters: { targets: c.targets, rank: c.rank },
      gradients: "adapters",
    }),
    createWorker: (model, c, _worker, init) =>
      new AdapterWorker(
        model,
        c,
        adapterLayout(model.config, c, ["gA", "gB"]),
        init,
        spec.residual,
      ),
  };
}

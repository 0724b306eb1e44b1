/**
 * HD-PiSSA (docs/architecture.md §2): K workers, each training its own orthogonal slice of the principal
 * singular components. Worker k's slice (A_k, B_k) gives adapter gradients; its optimizer turns
 * them into signed steps (ΔA_k, ΔB_k) without ever changing A_k, B_k; the driver broadcasts all
 * K steps side by side, and every worker applies them to W as
 * `W += c·s·Σ_j (B_j+ΔB_j)(A_j+ΔA_j) − B_j A_j`.
 * @module
 */
import {
  type GpuTensor,
  hdPissaUpdate,
  hdPissaUpdateRows,
  isHalf,
  isRowParts,
  matrixShape,
  maxBlockRows,
} from "../../gpu/mod.ts";
import { adaptableLinears } from "../../model/config.ts";
import type { LlamaGpu } from "../../model/llama.ts";
import type { HostTensor } from "../../model/safetensors.ts";
import type { MicroBatch } from "../../model/batch.ts";
import { type AdapterFactors, hdPissaSlices } from "./adapter_init.ts";
import { concatContributions } from "./combine.ts";
import { factorKey, initFromTensors, initToTensors } from "./factors.ts";
import { initEachAdapted, type MethodInit } from "./init.ts";
import { adapterLayout } from "./layout.ts";
import { scaleSlices } from "./slice_scale.ts";
import { checkRankFits, type TrainingMethod } from "./method.ts";
import {
  type SharedStateSpec,
  type StepResult,
  WorkerMethod,
  type WorkerMethodConfig,
  WorkerStateError,
} from "./worker.ts";

/**
 * What HD-PiSSA's workers hold in common: all K fixed pairs A_j, B_j, which every worker applies
 * to its W. Each worker's optimizer moments belong to its own slice and differ.
 */
export const HD_PISSA_SHARED: SharedStateSpec = { adapters: true, optimizer: false };

/** The public HD-PiSSA code's gradient multiplier under a numeric mute, whatever γ is. */
export const FIXED_MUTE_RESCALE = 1e16;

/** HD-PiSSA on worker k. */
export class HdPissaWorker extends WorkerMethod {
  readonly shared: SharedStateSpec = HD_PISSA_SHARED;
  /** Per adapted weight: the K pairs with their step buffers, in worker order. */
  #pairs = new Map<string, { A: GpuTensor; B: GpuTensor; dA: GpuTensor; dB: GpuTensor }[]>();
  #scratch = new Map<
    string,
    { L: GpuTensor; R: GpuTensor; D: GpuTensor | null; block: GpuTensor | null }
  >();

  constructor(
    model: LlamaGpu,
    config: WorkerMethodConfig,
    readonly worker: number,
    init: MethodInit,
  ) {
    super(model, config, hdPissa.layout(model.config, config));
    const { rank: r, workers: K } = config;
    if (!(worker >= 0 && worker < K)) throw new WorkerStateError(`worker ${worker} of ${K}`);
    const s = config.alpha / r;
    if (config.mute === "exact") model.setAdapterScales(0, s);
    else {
      model.setAdapterScales(Math.fround(config.mute * s), s, {
        gamma: config.mute,
        // The public code's backward multiplies by 1e16 whatever γ is (the mute ablation).
        ...((config.muteRescale ?? "inverse") === "fixed" ? { rescale: FIXED_MUTE_RESCALE } : {}),
      });
    }
    for (const name of model.adapterNames()) {
      const given = init.factors.get(name);
      if (!given || given.length !== K) {
        throw new WorkerStateError(
          `${name}: expected ${K} adapter slices, got ${given?.length ?? 0}`,
        );
      }
      // The init (and the checkpoints' copy of it) keeps the SVD's slices; every worker rescales
      // them alike here, so the stored init stays the method's and W stays the same everywhere.
      const slices = scaleSlices(given, config.sliceScale ?? "svd", name);
      const W = model.weightMatrix(name);
      const [out, inn] = matrixShape(W);
      // Over the binding limit W is row blocks (model/llama_params.ts): the update runs per block
      // with its rows of L, and a 16-bit W's f32 product is one block's, not W's.
      const rows = isRowParts(W) ? maxBlockRows(W) : out;
      const half = isHalf(isRowParts(W) ? W.parts[0].dtype : W.dtype);
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
          // A 16-bit W gets the f32 product first, then one rounded add (gpu/kernels/hd_pissa.ts).
          D: half
            ? this.gpu.tensor(isRowParts(W) ? [rows * inn] : [out, inn], "f32", `D ${key}`)
            : null,
          block: isRowParts(W) ? this.gpu.tensor([rows * 2 * K * r], "f32", `L rows ${key}`) : null,
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
      const W = this.model.weightMatrix(name);
      const [out, inn] = matrixShape(W);
      const { L, R, D, block } = this.#scratch.get(`${out}x${inn}`)!;
      if (isRowParts(W)) {
        hdPissaUpdateRows(rec, W, pairs, L, R, {
          c,
          s,
          block: block ?? undefined,
          scratch: D ?? undefined,
        });
      } else hdPissaUpdate(rec, W, pairs, L, R, { c, s, scratch: D ?? undefined });
    }
    await rec.submit();
    return performance.now() - t0;
  }

  merge(): Promise<void> {
    return Promise.resolve(); // W is the model.
  }

  /**
   * The device buffers of the K pairs (A_j, B_j) of one adapted weight, in worker order: the ones
   * the update of W reads. For checks; nothing writes them after the constructor.
   */
  factorBuffers(name: string): readonly { readonly A: GpuTensor; readonly B: GpuTensor }[] {
    const pairs = this.#pairs.get(name);
    if (!pairs) throw new WorkerStateError(`${name} has no adapter`);
    return pairs.map(({ A, B }) => ({ A, B }));
  }

  /** All K adapter pairs (for checkpoints: A_j, B_j never change). */
  async adapters(): Promise<Map<string, HostTensor>> {
    const out = new Map<string, HostTensor>();
    const names: string[] = [];
    const ts: GpuTensor[] = [];
    for (const [name, pairs] of this.#pairs) {
      pairs.forEach((p, j) => {
        names.push(factorKey(name, "A", j), factorKey(name, "B", j));
        ts.push(p.A, p.B);
      });
    }
    const data = await this.gpu.readMany(ts);
    names.forEach((n, i) => out.set(n, { shape: [...ts[i].shape], data: data[i] as Float32Array }));
    return out;
  }

  /** Overwrites all K pairs (and this worker's own copy of its pair) with another worker's. */
  protected setAdapters(tensors: ReadonlyMap<string, HostTensor>): void {
    for (const [name, pairs] of this.#pairs) {
      pairs.forEach((p, j) => {
        const A = tensors.get(factorKey(name, "A", j)), B = tensors.get(factorKey(name, "B", j));
        if (!A || !B || A.data.length !== p.A.size || B.data.length !== p.B.size) {
          throw new WorkerStateError(`${name}: pair ${j} to copy is missing or of another size`);
        }
        this.gpu.write(p.A, A.data);
        this.gpu.write(p.B, B.data);
        if (j === this.worker) this.model.writeAdapter(name, A.data, B.data);
      });
    }
  }
}

export const hdPissa: TrainingMethod<"hd-pissa"> = {
  name: "hd-pissa",
  summary: "K orthogonal slices of the principal components, one per worker; W updated directly",
  rankBoundLabel: "2Kr",
  rankBound: ({ rank, workers }) => workers === undefined ? null : 2 * workers * rank,
  color: "#d1495b",

  validate(config, s) {
    checkRankFits(
      "hd-pissa",
      config,
      s.targets,
      s.workers * s.rank,
      `--workers × --rank = ${s.workers} × ${s.rank} = ${s.workers * s.rank}`,
    );
  },

  layout: (config, o) => adapterLayout(config, o, ["dA", "dB"]),
  updateLength: (layout, workers) => layout.length * workers,
  combine: concatContributions,
  shared: HD_PISSA_SHARED,
  traffic(layout, workers) {
    return {
      sent: 4 * layout.length,
      received: 4 * layout.length * workers,
      expression: "sent 4·Σ(in+out)·r bytes; received K times that (all K contributions)",
    };
  },
  init: (config, weights, o, onProgress) =>
    initEachAdapted(config, weights, o, ({ linear, W, svd }) => ({
      factors: hdPissaSlices(W, o.workers, o.rank, o.alpha, { name: linear.name, svd }),
    }), onProgress),
  svdComponents: (s) => s.workers * s.rank,
  initLog: (config, s) => {
    const matrices = adaptableLinears(config, s.targets).length;
    return `initialising hd-pissa adapters (SVD of ${matrices} matrices)`;
  },
  initToTensors,
  initFromTensors: (tensors, s) => initFromTensors(tensors, s.workers),

  modelOptions: (c) => ({ adapters: { targets: c.targets, rank: c.rank }, gradients: "adapters" }),
  createWorker: (model, c, worker, init) => new HdPissaWorker(model, c, worker, init),
};

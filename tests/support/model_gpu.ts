/**
 * Shared pieces of the GPU model tests: tiny random configs and weights, micro-batches, the
 * float64 reference of a whole step over several micro-batches (docs/architecture.md §4's loss weighting),
 * and error measures.
 */
import assert from "node:assert/strict";
import { adaptableLinears, expectedTensors, type LlamaConfig } from "../../model/config.ts";
import type { HostTensor } from "../../model/safetensors.ts";
import {
  type ReferenceAdapter,
  type ReferenceBatch,
  referenceForwardBackward,
} from "../../model/reference/llama.ts";
import type { MicroBatch } from "../../model/batch.ts";
import { LlamaGpu, type LlamaGpuOptions } from "../../model/llama.ts";
import { Gpu } from "../../gpu/mod.ts";
import { Rng } from "../../core/rng.ts";

/**
 * A small test config: the given sizes, with the fields tests do not vary set as the tiny
 * models here use them (untied, eps 1e-5, rope theta 500, 16 positions, pad/bos/eos 0/1/2).
 */
export function smallConfig(
  sizes: Pick<
    LlamaConfig,
    | "hidden_size"
    | "intermediate_size"
    | "num_hidden_layers"
    | "num_attention_heads"
    | "num_key_value_heads"
    | "vocab_size"
  >,
): LlamaConfig {
  return {
    ...sizes,
    rms_norm_eps: 1e-5,
    rope_theta: 500,
    max_position_embeddings: 16,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    pad_token_id: 0,
  };
}

/** GQA (4 query heads on 2 KV heads), untied, head_dim 6 (not a multiple of 4). */
export const GQA_UNTIED: LlamaConfig = {
  hidden_size: 24,
  intermediate_size: 40,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 37,
  rms_norm_eps: 1e-5,
  rope_theta: 500,
  max_position_embeddings: 64,
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
  pad_token_id: 0,
};

/** Tied embeddings, GQA 6 on 3 heads of 4. */
export const GQA_TIED: LlamaConfig = {
  ...GQA_UNTIED,
  hidden_size: 24,
  intermediate_size: 36,
  num_attention_heads: 6,
  num_key_value_heads: 3,
  vocab_size: 29,
  tie_word_embeddings: true,
};

/**
 * Every LLaMA bias, dynamic NTK RoPE in effect (sequences of 9 over max_position_embeddings 8)
 * and a sliding window of 4: a combination no family has, to test them together.
 */
export const BIASED_WINDOWED: LlamaConfig = {
  ...GQA_UNTIED,
  max_position_embeddings: 8,
  attention_bias: true,
  mlp_bias: true,
  rope_scaling: { rope_type: "dynamic", factor: 3 },
  sliding_window: 4,
};

/** Random f32 weights: norms near 1, biases near 0, matrices scaled by 1/sqrt(fan-in). */
export function randomWeights(config: LlamaConfig, rng: Rng): Map<string, HostTensor> {
  const w = new Map<string, HostTensor>();
  for (const spec of expectedTensors(config)) {
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    const isBias = spec.name.endsWith(".bias");
    const isNorm = spec.shape.length === 1 && !isBias;
    const fanIn = spec.shape[spec.shape.length - 1];
    for (let i = 0; i < n; i++) {
      data[i] = isBias
        ? 0.3 * rng.normal()
        : isNorm
        ? 1 + 0.2 * rng.normal()
        : rng.normal() * (1.5 / Math.sqrt(fanIn));
    }
    w.set(spec.name, { shape: [...spec.shape], data });
  }
  return w;
}

/**
 * A micro-batch of random ids whose targets start at a random position of each row (none at
 * all with `targets: false`), with a padded non-target tail on the last row.
 */
export function randomMicroBatch(
  config: LlamaConfig,
  rng: Rng,
  rows: number,
  seqLen: number,
  targets = true,
): MicroBatch {
  const ids = new Int32Array(rows * seqLen);
  const targetMask = new Uint8Array(rows * seqLen);
  let count = 0;
  for (let r = 0; r < rows; r++) {
    const start = 1 + rng.int(seqLen - 2);
    const end = r === rows - 1 ? seqLen - 1 - rng.int(2) : seqLen;
    for (let j = 0; j < seqLen; j++) {
      ids[r * seqLen + j] = rng.int(config.vocab_size);
      if (targets && j >= start && j < end) {
        targetMask[r * seqLen + j] = 1;
        count++;
      }
    }
  }
  return { ids, targetMask, targets: count, rows, seqLen };
}

export function toReferenceBatch(mb: MicroBatch): ReferenceBatch {
  const ids: number[][] = [];
  const targetMask: number[][] = [];
  for (let r = 0; r < mb.rows; r++) {
    const s = r * mb.seqLen;
    ids.push(Array.from(mb.ids.subarray(s, s + mb.seqLen)));
    targetMask.push(Array.from(mb.targetMask.subarray(s, s + mb.seqLen)));
  }
  return { ids, targetMask };
}

/** Random adapter factors for every linear of the config. */
export function randomAdapterFactors(
  config: LlamaConfig,
  rank: number,
  rng: Rng,
): Map<string, { A: Float32Array; B: Float32Array }> {
  const out = new Map<string, { A: Float32Array; B: Float32Array }>();
  for (const lin of adaptableLinears(config)) {
    out.set(lin.name, {
      A: rng.normals(rank * lin.in, 0.25),
      B: rng.normals(lin.out * rank, 0.25),
    });
  }
  return out;
}

/** Writes each adapter of `model` from its factors in `factors` (one for each of its adapters). */
export function writeAdapters(
  model: LlamaGpu,
  factors: ReadonlyMap<string, { A: Float32Array; B: Float32Array }>,
): void {
  for (const n of model.adapterNames()) {
    const f = factors.get(n);
    assert.ok(f, `no factors for the adapter ${n}`);
    model.writeAdapter(n, f.A, f.B);
  }
}

/**
 * The reference's adapters of `names` (default: every one in `factors`) from their factors, all of
 * rank `rank` with scale `scale` and σ `sigma`.
 */
export function referenceAdapters(
  factors: ReadonlyMap<string, { A: Float32Array; B: Float32Array }>,
  rank: number,
  scale: number,
  sigma: number,
  names: Iterable<string> = factors.keys(),
): Map<string, ReferenceAdapter> {
  return new Map(Array.from(names, (n) => {
    const f = factors.get(n);
    assert.ok(f, `no factors for the adapter ${n}`);
    return [n, { A: f.A, B: f.B, rank, scale, sigma }];
  }));
}

export interface ReferenceStep {
  loss: number;
  /** Logits of each micro-batch [rows·S·V]. */
  logits: Float64Array[];
  gradW: Map<string, Float64Array>;
  gradA: Map<string, Float64Array>;
  gradB: Map<string, Float64Array>;
}

/**
 * docs/architecture.md §4 in float64: the mean, over the micro-batches with a target, of each micro-batch's
 * mean loss, and the same mean of the gradients.
 */
export function referenceStep(
  config: LlamaConfig,
  weights: ReadonlyMap<string, HostTensor>,
  batches: readonly MicroBatch[],
  adapters: ReadonlyMap<string, ReferenceAdapter> = new Map(),
): ReferenceStep {
  const results = batches.map((b) =>
    referenceForwardBackward(config, weights, toReferenceBatch(b), { adapters })
  );
  const used = results.filter((r) => r.targets > 0);
  const k = used.length;
  const sumMaps = (pick: (r: (typeof results)[0]) => Map<string, Float64Array>) => {
    const out = new Map<string, Float64Array>();
    for (const [name, g] of pick(results[0])) out.set(name, new Float64Array(g.length));
    for (const r of used) {
      for (const [name, g] of pick(r)) {
        const o = out.get(name)!;
        for (let i = 0; i < g.length; i++) o[i] += g[i] / k;
      }
    }
    return out;
  };
  return {
    loss: k === 0 ? 0 : used.reduce((a, r) => a + r.loss, 0) / k,
    logits: results.map((r) => r.logits),
    gradW: sumMaps((r) => r.gradW),
    gradA: sumMaps((r) => r.gradA),
    gradB: sumMaps((r) => r.gradB),
  };
}

/** ‖a − b‖ / ‖b‖ in float64. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, "length mismatch");
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  const r = Math.sqrt(num / den);
  return Number.isNaN(r) ? Infinity : r;
}

/** The largest relative error of several named comparisons, with the name of the worst. */
export class WorstError {
  value = 0;
  name = "";
  add(name: string, err: number): void {
    if (!(err <= this.value)) {
      this.value = err;
      this.name = name;
    }
  }
  toString(): string {
    return `${this.value.toExponential(2)} (${this.name})`;
  }
}

/** Everything a step produced, read back with one submit. */
export interface GpuStep {
  loss: number;
  gradA: Map<string, Float32Array>;
  gradB: Map<string, Float32Array>;
  gradW: Map<string, Float32Array>;
}

/** Uploads `batches`, records and submits one training step, and reads every gradient. */
export async function gpuStep(model: LlamaGpu, batches: readonly MicroBatch[]): Promise<GpuStep> {
  model.setStepBatches(batches);
  const rec = model.gpu.record({ label: "test step" });
  model.recordForwardBackward(rec);
  const loss = rec.read(model.loss);
  const read = (names: string[], pick: (n: string) => Parameters<typeof rec.read>[0]) =>
    names.map((n) => [n, rec.read(pick(n))] as const);
  const a = read(model.adapterNames(), (n) => model.adapter(n).gA);
  const b = read(model.adapterNames(), (n) => model.adapter(n).gB);
  const names = model.trainableNames();
  const parts = names.map((n) => {
    try {
      return model.weightGradParts(n);
    } catch {
      return null;
    }
  });
  const w = names.map((n, i) =>
    [
      n,
      parts[i] && parts[i]!.parts.length > 1
        ? Promise.all(parts[i]!.parts.map((t) => rec.read(t))).then((xs) => {
          const out = new Float32Array(parts[i]!.rows * parts[i]!.cols);
          xs.forEach((x, j) => out.set(x, parts[i]!.starts[j] * parts[i]!.cols));
          return out;
        })
        : rec.read(model.weightGrad(n)),
    ] as const
  );
  await rec.submit();
  const collect = async (xs: readonly (readonly [string, Promise<unknown>])[]) => {
    const m = new Map<string, Float32Array>();
    for (const [n, p] of xs) m.set(n, (await p) as Float32Array);
    return m;
  };
  return {
    loss: (await loss)[0],
    gradA: await collect(a),
    gradB: await collect(b),
    gradW: await collect(w),
  };
}

export { Rng };

/** A model's options for `stepOnOwnGpu`: all but the sizes it fixes. */
export type OwnStepOptions = Omit<LlamaGpuOptions, "maxRows" | "seqLen" | "maxMicroBatches">;

/**
 * One step over two micro-batches (3 and 2 rows of `seqLen`) of a model with random weights and
 * random adapters (from `seed`; adapter n from `Rng(n.length)`), on a Gpu of its own so that the
 * pool's bytes are this model's buffers alone. Returns the step, those bytes and the options the
 * model resolved (what a default turned into).
 */
export async function stepOnOwnGpu(
  config: LlamaConfig,
  seed: number,
  seqLen: number,
  options: OwnStepOptions,
  scales: [number, number],
): Promise<{ result: GpuStep; bytes: number; resolved: LlamaGpu["options"] }> {
  const rng = new Rng(seed);
  const weights = randomWeights(config, rng);
  const batches = [
    randomMicroBatch(config, rng, 3, seqLen),
    randomMicroBatch(config, rng, 2, seqLen),
  ];
  const gpu = await Gpu.open();
  try {
    const model = await LlamaGpu.create(gpu, config, weights, {
      maxRows: 3,
      seqLen,
      maxMicroBatches: 2,
      ...options,
    });
    const bytes = gpu.stats().bytes;
    try {
      for (const n of model.adapterNames()) {
        const a = model.adapter(n);
        const r = new Rng(n.length);
        model.writeAdapter(n, r.normals(a.A.size, 0.3), r.normals(a.B.size, 0.3));
      }
      model.setAdapterScales(...scales);
      return { result: await gpuStep(model, batches), bytes, resolved: model.options };
    } finally {
      model.close();
    }
  } finally {
    gpu.close();
  }
}

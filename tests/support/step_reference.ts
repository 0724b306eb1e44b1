/**
 * An independent float64 reference of one training step of every method (docs/architecture.md §2 and §4),
 * built on the float64 model reference. Tests compare the GPU workers' weights after a step with
 * what this returns.
 */
import { adaptableLinears, type LinearKind, type LlamaConfig } from "../../model/config.ts";
import {
  type ReferenceAdapter,
  referenceForwardBackward,
  type ReferenceTensor,
} from "../../model/reference/llama.ts";

/** One micro-batch: token ids and target masks per example. */
export interface RefMicroBatch {
  ids: number[][];
  targetMask: number[][];
}

export interface RefStepConfig {
  config: LlamaConfig;
  /** The weights before the step (for PiSSA: the original W; the residual is formed here). */
  weights: ReadonlyMap<string, ReferenceTensor>;
  method: "hd-pissa" | "pissa" | "lora" | "full";
  targets: readonly LinearKind[];
  rank: number;
  alpha: number;
  /** HD-PiSSA: all K slices per weight; PiSSA/LoRA: the one shared adapter (index 0). */
  adapters: ReadonlyMap<string, { A: ArrayLike<number>; B: ArrayLike<number> }[]>;
  /** Worker k's micro-batches. */
  shards: RefMicroBatch[][];
  mute: "exact" | number;
  aggregate: "mean" | "sum";
  optimizer: "sgd" | "adamw";
  lr: number;
  weightDecay: number;
  /** Global-norm clip; 0 = off. */
  clip: number;
  /** `full`: which weights train (default: every weight except the embeddings and lm_head). */
  fullTrainable?: (name: string) => boolean;
}

export interface RefStepResult {
  /** The effective weights after the step (merged for LoRA/PiSSA). */
  weights: Map<string, Float64Array>;
  /** Each worker's loss. */
  losses: number[];
  /** HD-PiSSA: worker k's signed steps per weight. */
  deltas?: Map<string, { dA: Float64Array; dB: Float64Array }>[];
}

const B1 = 0.9, B2 = 0.999, EPS = 1e-8;

/** The optimizer's first step from zero moments: Δ = −lr·(update + wd·p). */
function firstStep(
  g: ArrayLike<number>,
  p: ArrayLike<number>,
  o: Pick<RefStepConfig, "optimizer" | "lr" | "weightDecay">,
): Float64Array {
  const d = new Float64Array(g.length);
  for (let i = 0; i < g.length; i++) {
    let u = g[i];
    if (o.optimizer === "adamw") {
      // t = 1: m̂ = g, v̂ = g² (PyTorch's bias correction of (1−β)·g).
      const m = (1 - B1) * g[i], v = (1 - B2) * g[i] * g[i];
      const mh = m / (1 - B1), vh = v / (1 - B2);
      u = mh / (Math.sqrt(vh) + EPS);
    }
    d[i] = -o.lr * (u + o.weightDecay * p[i]);
  }
  return d;
}

function clipFactor(grads: ArrayLike<number>[], clip: number): number {
  if (!(clip > 0)) return 1;
  let ss = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) ss += g[i] * g[i];
  // PyTorch's clip_grad_norm_: scale by min(1, clip / (norm + 1e-6)).
  return Math.min(1, clip / (Math.sqrt(ss) + 1e-6));
}

/**
 * Worker gradients per docs/architecture.md §4: the mean, over the micro-batches with at least one target, of
 * each micro-batch's gradient of its token-mean loss.
 */
function workerGrads(
  c: RefStepConfig,
  shard: RefMicroBatch[],
  adapters: ReadonlyMap<string, ReferenceAdapter>,
  weights: ReadonlyMap<string, ReferenceTensor>,
) {
  const gradA = new Map<string, Float64Array>();
  const gradB = new Map<string, Float64Array>();
  const gradW = new Map<string, Float64Array>();
  let loss = 0;
  const results = shard.map((mb) => referenceForwardBackward(c.config, weights, mb, { adapters }))
    .filter((r) => r.targets > 0);
  const n = results.length;
  const acc = (into: Map<string, Float64Array>, from: Map<string, Float64Array>) => {
    for (const [k, g] of from) {
      const t = into.get(k) ?? new Float64Array(g.length);
      for (let i = 0; i < g.length; i++) t[i] += g[i] / n;
      into.set(k, t);
    }
  };
  for (const r of results) {
    loss += r.loss / n;
    acc(gradA, r.gradA);
    acc(gradB, r.gradB);
    acc(gradW, r.gradW);
  }
  return { loss, gradA, gradB, gradW, empty: n === 0 };
}

function toF64(t: ArrayLike<number>): Float64Array {
  return Float64Array.from(t as ArrayLike<number>);
}

/** `W + c·Σ_j s·(B_j+ΔB_j)(A_j+ΔA_j) − s·B_j A_j`, computed entry by entry in float64. */
function addProducts(
  W: Float64Array,
  out: number,
  inDim: number,
  r: number,
  pairs: {
    A: ArrayLike<number>;
    B: ArrayLike<number>;
    dA: ArrayLike<number>;
    dB: ArrayLike<number>;
  }[],
  factor: number,
): void {
  for (const { A, B, dA, dB } of pairs) {
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inDim; i++) {
        let u = 0;
        for (let j = 0; j < r; j++) {
          const b = B[o * r + j], db = dB[o * r + j];
          const a = A[j * inDim + i], da = dA[j * inDim + i];
          u += (b + db) * (a + da) - b * a;
        }
        W[o * inDim + i] += factor * u;
      }
    }
  }
}

/** Runs one step of `c.method` and returns the effective weights after it. */
export function referenceStep(c: RefStepConfig): RefStepResult {
  const K = c.shards.length;
  const s = c.alpha / c.rank;
  const linears = adaptableLinears(c.config, c.targets);
  const weights = new Map<string, Float64Array>();
  for (const [k, t] of c.weights) weights.set(k, toF64(t.data));
  const shapeOf = (name: string) => c.weights.get(name)!.shape;
  const asRef = (m: Map<string, Float64Array>) =>
    new Map([...m].map(([k, d]) => [k, { shape: shapeOf(k), data: d }] as const));

  if (c.method === "hd-pissa") {
    const sigma = c.mute === "exact" ? 0 : c.mute * s;
    const losses: number[] = [];
    const deltas: Map<string, { dA: Float64Array; dB: Float64Array }>[] = [];
    for (let k = 0; k < K; k++) {
      const adapters = new Map<string, ReferenceAdapter>();
      for (const l of linears) {
        const { A, B } = c.adapters.get(l.name)![k];
        adapters.set(l.name, { A, B, rank: c.rank, scale: s, sigma });
      }
      const g = workerGrads(c, c.shards[k], adapters, asRef(weights));
      losses.push(g.loss);
      const f = clipFactor(
        linears.flatMap((l) => [g.gradA.get(l.name)!, g.gradB.get(l.name)!]),
        c.clip,
      );
      const d = new Map<string, { dA: Float64Array; dB: Float64Array }>();
      for (const l of linears) {
        const { A, B } = c.adapters.get(l.name)![k];
        const gA = g.empty ? new Float64Array(A.length) : g.gradA.get(l.name)!.map((x) => x * f);
        const gB = g.empty ? new Float64Array(B.length) : g.gradB.get(l.name)!.map((x) => x * f);
        d.set(l.name, { dA: firstStep(gA, A, c), dB: firstStep(gB, B, c) });
      }
      deltas.push(d);
    }
    const cAgg = c.aggregate === "mean" ? 1 / K : 1;
    for (const l of linears) {
      const pairs = c.adapters.get(l.name)!.map((p, j) => ({ ...p, ...deltas[j].get(l.name)! }));
      addProducts(weights.get(l.name)!, l.out, l.in, c.rank, pairs, cAgg * s);
    }
    return { weights, losses, deltas };
  }

  if (c.method === "full") {
    const trainable = c.fullTrainable ??
      ((n: string) => n !== "model.embed_tokens.weight" && n !== "lm_head.weight");
    const per = c.shards.map((shard) => workerGrads(c, shard, new Map(), asRef(weights)));
    const names = [...weights.keys()].filter(trainable);
    const avg = new Map<string, Float64Array>();
    for (const n of names) {
      const a = new Float64Array(weights.get(n)!.length);
      for (const p of per) {
        const g = p.gradW.get(n);
        if (g) { for (let i = 0; i < a.length; i++) a[i] += g[i] / K; }
      }
      avg.set(n, a);
    }
    const f = clipFactor([...avg.values()], c.clip);
    for (const n of names) {
      const w = weights.get(n)!;
      const d = firstStep(avg.get(n)!.map((x) => x * f), w, c);
      for (let i = 0; i < w.length; i++) w[i] += d[i];
    }
    return { weights, losses: per.map((p) => p.loss) };
  }

  // LoRA and PiSSA: one shared adapter trained data-parallel on W_res (PiSSA) or W (LoRA).
  const adapters = new Map<string, ReferenceAdapter>();
  for (const l of linears) {
    const { A, B } = c.adapters.get(l.name)![0];
    adapters.set(l.name, { A, B, rank: c.rank, scale: s, sigma: s });
    if (c.method === "pissa") {
      const w = weights.get(l.name)!;
      for (let o = 0; o < l.out; o++) {
        for (let i = 0; i < l.in; i++) {
          let u = 0;
          for (let j = 0; j < c.rank; j++) u += B[o * c.rank + j] * A[j * l.in + i];
          w[o * l.in + i] -= s * u;
        }
      }
    }
  }
  const per = c.shards.map((shard) => workerGrads(c, shard, adapters, asRef(weights)));
  const avgOf = (name: string, which: "gradA" | "gradB", len: number) => {
    const a = new Float64Array(len);
    for (const p of per) {
      const g = p[which].get(name);
      if (g && !p.empty) { for (let i = 0; i < len; i++) a[i] += g[i] / K; }
    }
    return a;
  };
  const gA = new Map(linears.map((l) => [l.name, avgOf(l.name, "gradA", c.rank * l.in)]));
  const gB = new Map(linears.map((l) => [l.name, avgOf(l.name, "gradB", l.out * c.rank)]));
  const f = clipFactor([...gA.values(), ...gB.values()], c.clip);
  for (const l of linears) {
    const { A, B } = c.adapters.get(l.name)![0];
    const dA = firstStep(gA.get(l.name)!.map((x) => x * f), A, c);
    const dB = firstStep(gB.get(l.name)!.map((x) => x * f), B, c);
    const A1 = toF64(A).map((x, i) => x + dA[i]);
    const B1 = toF64(B).map((x, i) => x + dB[i]);
    // Merge: W_res + s·B'A'.
    addProducts(weights.get(l.name)!, l.out, l.in, c.rank, [{
      A: new Float64Array(A1.length),
      B: B1,
      dA: A1,
      dB: new Float64Array(B1.length),
    }], s);
  }
  return { weights, losses: per.map((p) => p.loss) };
}

/**
 * An independent float64 reference of training steps of every method (docs/architecture.md §2 and
 * §4), built on the float64 model reference: `referenceStep` is one step from zero moments,
 * `referenceRun` several steps with the optimizer's moments carried across them as PyTorch does.
 * Tests compare the GPU workers' weights after the steps with what these return.
 */
import { adaptableLinears, type LinearKind, type LlamaConfig } from "../../model/config.ts";
import {
  type ReferenceAdapter,
  referenceForwardBackward,
  type ReferenceTensor,
} from "../../model/reference/llama.ts";

/** One micro-batch: token ids and target masks per example. */
export interface RefMicroBatch {
  ids: readonly (readonly number[])[];
  targetMask: readonly (readonly number[])[];
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
  c: Pick<RefStepConfig, "config">,
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

/** The methods `referenceRun` knows: the list a multi-step test walks. */
export const REFERENCE_METHODS = ["hd-pissa", "pissa", "lora", "full"] as const;

/** Several steps of one method: the settings of `RefStepConfig`, a batch plan and a schedule. */
export interface RefRunConfig extends Omit<RefStepConfig, "shards" | "lr"> {
  /** `steps[t][k]`: worker k's micro-batches at step t. */
  steps: RefMicroBatch[][][];
  /** The learning rate of each step. */
  lrs: readonly number[];
}

export interface RefRunResult {
  /** The effective weights after the last step (merged for LoRA/PiSSA). */
  weights: Map<string, Float64Array>;
  /** `losses[t][k]`: worker k's loss at step t, before that step's update. */
  losses: number[][];
  /**
   * `clipFactors[t]`: the factor the gradients were scaled by at step t (1 when clipping did not
   * trigger): one per worker for HD-PiSSA, one for the averaged gradient of the baselines.
   */
  clipFactors: number[][];
}

/**
 * docs/architecture.md §2 "Schedule", cosine, written out again: w = ceil(ratio·T), a linear
 * warmup from 0 over steps t < w, then lr0·½·(1 + cos(π·(t − w)/max(1, T − w))).
 */
export function referenceCosineLr(
  t: number,
  o: { lr: number; warmupRatio: number; totalSteps: number },
): number {
  const w = Math.ceil(o.warmupRatio * o.totalSteps);
  if (t < w) return o.lr * t / w;
  return o.lr * 0.5 * (1 + Math.cos(Math.PI * (t - w) / Math.max(1, o.totalSteps - w)));
}

/**
 * PyTorch's optimizers with their state, one entry per parameter key: SGD, and AdamW as
 * `torch.optim.AdamW` (m, v start at zero; bias correction with the step count t; decoupled
 * decay). `delta` returns the signed step −lr·wd·p − (lr/(1−β1ᵗ))·m / (√v/√(1−β2ᵗ) + ε), which
 * the caller adds to p (the baselines) or sends as ΔA, ΔB without touching p (HD-PiSSA).
 */
class RefOptimizer {
  #m = new Map<string, Float64Array>();
  #v = new Map<string, Float64Array>();

  constructor(readonly o: Pick<RefStepConfig, "optimizer" | "weightDecay">) {}

  delta(
    key: string,
    g: ArrayLike<number>,
    p: ArrayLike<number>,
    lr: number,
    t: number,
  ): Float64Array {
    const wd = this.o.weightDecay;
    const d = new Float64Array(g.length);
    if (this.o.optimizer === "sgd") {
      for (let i = 0; i < g.length; i++) d[i] = -lr * g[i] - lr * wd * p[i];
      return d;
    }
    if (!this.#m.has(key)) {
      this.#m.set(key, new Float64Array(g.length));
      this.#v.set(key, new Float64Array(g.length));
    }
    const m = this.#m.get(key)!, v = this.#v.get(key)!;
    const stepSize = lr / (1 - B1 ** t);
    const bc2Sqrt = Math.sqrt(1 - B2 ** t);
    for (let i = 0; i < g.length; i++) {
      m[i] = B1 * m[i] + (1 - B1) * g[i];
      v[i] = B2 * v[i] + (1 - B2) * g[i] * g[i];
      d[i] = -lr * wd * p[i] - stepSize * m[i] / (Math.sqrt(v[i]) / bc2Sqrt + EPS);
    }
    return d;
  }
}

/**
 * Runs `c.steps.length` steps of `c.method` and returns the effective weights after them, every
 * worker's loss at every step and the clip factors. HD-PiSSA: worker k's moments belong to its
 * fixed A_k, B_k, which never change; every step adds c·s·Σ_j (B_j+ΔB_j)(A_j+ΔA_j) − B_j A_j
 * to W. The baselines: the mean of the K gradients (clipped) takes one optimizer step, the same
 * on every worker, on the shared adapter (merged at the end) or on the trainable weights.
 */
export function referenceRun(c: RefRunConfig): RefRunResult {
  const T = c.steps.length;
  if (c.lrs.length !== T) throw new Error(`${T} steps but ${c.lrs.length} learning rates`);
  const K = c.steps[0].length;
  const s = c.alpha / c.rank;
  const linears = adaptableLinears(c.config, c.targets);
  const weights = new Map<string, Float64Array>();
  for (const [k, t] of c.weights) weights.set(k, toF64(t.data));
  const shapeOf = (name: string) => c.weights.get(name)!.shape;
  const asRef = (m: Map<string, Float64Array>) =>
    new Map([...m].map(([k, d]) => [k, { shape: shapeOf(k), data: d }] as const));
  const losses: number[][] = [];
  const clipFactors: number[][] = [];

  if (c.method === "hd-pissa") {
    const sigma = c.mute === "exact" ? 0 : c.mute * s;
    const cAgg = c.aggregate === "mean" ? 1 / K : 1;
    const opts = Array.from({ length: K }, () => new RefOptimizer(c));
    const slices = (k: number) => {
      const m = new Map<string, ReferenceAdapter>();
      for (const l of linears) {
        const { A, B } = c.adapters.get(l.name)![k];
        m.set(l.name, { A, B, rank: c.rank, scale: s, sigma });
      }
      return m;
    };
    for (let t = 0; t < T; t++) {
      const stepLosses: number[] = [];
      const factors: number[] = [];
      const deltas: Map<string, { dA: Float64Array; dB: Float64Array }>[] = [];
      // Every worker's gradients are taken at the same W, before any of this step's updates.
      const W = asRef(weights);
      for (let k = 0; k < K; k++) {
        const g = workerGrads(c, c.steps[t][k], slices(k), W);
        stepLosses.push(g.loss);
        const f = g.empty ? 1 : clipFactor(
          linears.flatMap((l) => [g.gradA.get(l.name)!, g.gradB.get(l.name)!]),
          c.clip,
        );
        factors.push(f);
        const d = new Map<string, { dA: Float64Array; dB: Float64Array }>();
        for (const l of linears) {
          const { A, B } = c.adapters.get(l.name)![k];
          const gA = g.empty ? new Float64Array(A.length) : g.gradA.get(l.name)!.map((x) => x * f);
          const gB = g.empty ? new Float64Array(B.length) : g.gradB.get(l.name)!.map((x) => x * f);
          d.set(l.name, {
            dA: opts[k].delta(`${l.name}.A`, gA, A, c.lrs[t], t + 1),
            dB: opts[k].delta(`${l.name}.B`, gB, B, c.lrs[t], t + 1),
          });
        }
        deltas.push(d);
      }
      for (const l of linears) {
        const pairs = c.adapters.get(l.name)!.map((p, j) => ({ ...p, ...deltas[j].get(l.name)! }));
        addProducts(weights.get(l.name)!, l.out, l.in, c.rank, pairs, cAgg * s);
      }
      losses.push(stepLosses);
      clipFactors.push(factors);
    }
    return { weights, losses, clipFactors };
  }

  const opt = new RefOptimizer(c);
  /** The mean of the workers' gradients of one tensor, in float64. */
  const meanOf = (
    per: ReturnType<typeof workerGrads>[],
    which: "gradA" | "gradB" | "gradW",
    name: string,
    len: number,
  ) => {
    const a = new Float64Array(len);
    for (const p of per) {
      const g = p[which].get(name);
      if (g && !p.empty) { for (let i = 0; i < len; i++) a[i] += g[i] / K; }
    }
    return a;
  };

  if (c.method === "full") {
    const trainable = c.fullTrainable ??
      ((n: string) => n !== "model.embed_tokens.weight" && n !== "lm_head.weight");
    const names = [...weights.keys()].filter(trainable);
    for (let t = 0; t < T; t++) {
      const W = asRef(weights);
      const per = c.steps[t].map((shard) => workerGrads(c, shard, new Map(), W));
      const avg = names.map((n) => meanOf(per, "gradW", n, weights.get(n)!.length));
      const f = clipFactor(avg, c.clip);
      names.forEach((n, i) => {
        const w = weights.get(n)!;
        const d = opt.delta(n, avg[i].map((x) => x * f), w, c.lrs[t], t + 1);
        for (let j = 0; j < w.length; j++) w[j] += d[j];
      });
      losses.push(per.map((p) => p.loss));
      clipFactors.push([f]);
    }
    return { weights, losses, clipFactors };
  }

  // LoRA and PiSSA: one shared adapter, trained on W_res (PiSSA) or W (LoRA), merged at the end.
  const A = new Map<string, Float64Array>();
  const B = new Map<string, Float64Array>();
  for (const l of linears) {
    const f = c.adapters.get(l.name)![0];
    A.set(l.name, toF64(f.A));
    B.set(l.name, toF64(f.B));
    if (c.method === "pissa") {
      const w = weights.get(l.name)!;
      for (let o = 0; o < l.out; o++) {
        for (let i = 0; i < l.in; i++) {
          let u = 0;
          for (let j = 0; j < c.rank; j++) u += f.B[o * c.rank + j] * f.A[j * l.in + i];
          w[o * l.in + i] -= s * u;
        }
      }
    }
  }
  for (let t = 0; t < T; t++) {
    const adapters = new Map<string, ReferenceAdapter>();
    for (const l of linears) {
      adapters.set(l.name, {
        A: A.get(l.name)!,
        B: B.get(l.name)!,
        rank: c.rank,
        scale: s,
        sigma: s,
      });
    }
    const W = asRef(weights);
    const per = c.steps[t].map((shard) => workerGrads(c, shard, adapters, W));
    const gA = linears.map((l) => meanOf(per, "gradA", l.name, c.rank * l.in));
    const gB = linears.map((l) => meanOf(per, "gradB", l.name, l.out * c.rank));
    const f = clipFactor([...gA, ...gB], c.clip);
    linears.forEach((l, i) => {
      // Both steps are computed from the factors before this step.
      const a = A.get(l.name)!, b = B.get(l.name)!;
      const dA = opt.delta(`${l.name}.A`, gA[i].map((x) => x * f), a, c.lrs[t], t + 1);
      const dB = opt.delta(`${l.name}.B`, gB[i].map((x) => x * f), b, c.lrs[t], t + 1);
      for (let j = 0; j < a.length; j++) a[j] += dA[j];
      for (let j = 0; j < b.length; j++) b[j] += dB[j];
    });
    losses.push(per.map((p) => p.loss));
    clipFactors.push([f]);
  }
  for (const l of linears) {
    // Merge: W_res + s·B·A.
    const a = A.get(l.name)!, b = B.get(l.name)!;
    addProducts(weights.get(l.name)!, l.out, l.in, c.rank, [{
      A: new Float64Array(a.length),
      B: b,
      dA: a,
      dB: new Float64Array(b.length),
    }], s);
  }
  return { weights, losses, clipFactors };
}

/**
 * The linear layer `y = x·Wᵀ (+ b)` with an optional adapter, forward and backward (docs/architecture.md §2):
 *
 *   forward   y = x·Wᵀ + b + σ·(x·Aᵀ)·Bᵀ        (the adapter term skipped when σ = 0)
 *   backward  dX = dY·W + σ·(dY·B)·A            (the adapter term skipped when σ = 0)
 *             ∂W = dYᵀ·x,  ∂b = Σ_rows dY
 *             g_B = s·dYᵀ·(x·Aᵀ),  g_A = s·(dY·B)ᵀ·x
 *
 * With a numeric mute γ (σ = f32(γ·s)) the adapter backward is the paper's: dH = σ·dY is
 * materialised, g_B = dHᵀ·(x·Aᵀ), g_A = (dH·B)ᵀ·x, each scaled by f32(1/γ), and dX gets dH·B·A;
 * γ thus enters once each way. A fixed `rescale` replaces f32(1/γ) (the public HD-PiSSA code
 * multiplies by 1e16 whatever γ is), so that the mute ablation can tell underflow from a
 * mismatched rescale. Gradients accumulate (β = 1): the step zeroes them first.
 *
 * W (and ∂W) over the device's binding limit is held as row blocks (gpu/kernels/matmul_rows.ts):
 * the x·Wᵀ, dY·W and dYᵀ·x products then run per block through the `block` scratch, and nothing
 * else here changes (the adapter's A, B and the activations are never split).
 * @module
 */
import {
  biasBackward,
  biasForward,
  type GpuTensor,
  isRowParts,
  matmulNN,
  matmulNNRows,
  matmulNT,
  matmulNTRows,
  matmulTN,
  matmulTNRows,
  type Matrix,
  type NormOnLoad,
  type Recorder,
  scale,
} from "../gpu/mod.ts";

/** The scalars of the adapter path. */
export interface AdapterScales {
  /** Forward scale: 0 (exact mute), f32(γ·s) (numeric mute), s (LoRA, PiSSA). */
  sigma: number;
  /** Gradient scale s = alpha / r. */
  scale: number;
  /** The numeric mute γ, or null for the plain formulas. */
  gamma: number | null;
  /** The numeric mute's gradient multiplier: null for f32(1/γ), else this fixed value. */
  rescale: number | null;
}

/** An adapter's factors and gradients on one linear layer W [out, in]. */
export interface AdapterBuffers {
  /** [r, in] */
  A: GpuTensor;
  /** [out, r] */
  B: GpuTensor;
  /** [r, in], ∂L/∂A (accumulated). */
  gA: GpuTensor;
  /** [out, r], ∂L/∂B (accumulated). */
  gB: GpuTensor;
}

/** Flat scratch the adapter backward needs, at least [T·r] and [T·out] elements. */
export interface LinearScratch {
  /** dY·B (or dH·B). */
  dyB: GpuTensor;
  /** dH = σ·dY of the numeric mute; null when it is never used. */
  dH: GpuTensor | null;
}

/** The first `shape` elements of a flat (1-D) scratch tensor, viewed as `shape`. */
export function prefix(t: GpuTensor, shape: readonly number[]): GpuTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return t.rows(0, n).view(shape);
}

export interface LinearForward {
  /** [T, out] (written). */
  y: GpuTensor;
  /** [T, in]; with `norm`, the norm's input (the layer reads RMSNorm(x) on load). */
  x: GpuTensor;
  /** The RMSNorm in front of the layer, formed in the matmuls' loads (gpu `NormOnLoad`). */
  norm?: NormOnLoad | null;
  /**
   * [T, out] added to y by the last matmul that writes it (the adapter's when σ ≠ 0, else the
   * base product's, before a bias): the residual stream, with no pass of its own.
   */
  residual?: GpuTensor | null;
  /** [out, in], one tensor or row blocks. */
  W: Matrix;
  /** Flat f32 scratch for the column blocks of a split W (gpu/kernels/matmul_rows.ts). */
  block?: GpuTensor | null;
  /** [out], added to every row after x·Wᵀ (as `F.linear`), before the adapter term (as PEFT). */
  b?: GpuTensor | null;
  adapter?: AdapterBuffers;
  /** [T, r], x·Aᵀ (written): needed when σ ≠ 0 and for g_B; null to skip the adapter. */
  xa?: GpuTensor | null;
}

export function linearForward(rec: Recorder, t: LinearForward, scales: AdapterScales): void {
  const norm = t.norm ?? undefined;
  const residual = t.residual ?? undefined;
  const adapterTerm = t.adapter !== undefined && t.xa != null && scales.sigma !== 0;
  const base = { norm, residual: adapterTerm ? undefined : residual };
  if (isRowParts(t.W)) matmulNTRows(rec, t.y, t.x, t.W, { ...base, block: t.block ?? undefined });
  else matmulNT(rec, t.y, t.x, t.W, base);
  if (t.b) biasForward(rec, t.y, t.b);
  if (!t.adapter || !t.xa) return;
  matmulNT(rec, t.xa, t.x, t.adapter.A, { norm });
  if (adapterTerm) {
    matmulNT(rec, t.y, t.xa, t.adapter.B, { alpha: scales.sigma, beta: 1, residual });
  }
}

export interface LinearBackward {
  /** [T, in]: written (or added to, with `accumulateDx`); null when the input needs no gradient. */
  dx: GpuTensor | null;
  accumulateDx: boolean;
  /** [T, out] */
  dy: GpuTensor;
  /** [T, in], the forward input (the norm's input with `norm`). */
  x: GpuTensor;
  /** The forward's norm on load: the weight and adapter gradients read RMSNorm(x) the same way. */
  norm?: NormOnLoad | null;
  W: Matrix;
  /** [out, in] ∂W accumulator, split as W is; null when W is frozen. */
  dW: Matrix | null;
  /** Flat f32 scratch for the column blocks of a split W. */
  block?: GpuTensor | null;
  /** [out] ∂b accumulator; null (or absent) when there is no bias or it is frozen. */
  db?: GpuTensor | null;
  /** The adapter whose gradients to accumulate (with its forward's x·Aᵀ and the scratch). */
  adapter?: AdapterBuffers;
  xa?: GpuTensor | null;
  scratch: LinearScratch | null;
}

export function linearBackward(rec: Recorder, t: LinearBackward, scales: AdapterScales): void {
  const block = t.block ?? undefined;
  const beta = t.accumulateDx ? 1 : 0;
  const norm = t.norm ?? undefined;
  if (t.dx) {
    if (isRowParts(t.W)) matmulNNRows(rec, t.dx, t.dy, t.W, { beta, block });
    else matmulNN(rec, t.dx, t.dy, t.W, { beta });
  }
  if (t.dW) {
    if (isRowParts(t.dW)) matmulTNRows(rec, t.dW, t.dy, t.x, { beta: 1, block, norm });
    else matmulTN(rec, t.dW, t.dy, t.x, { beta: 1, norm });
  }
  if (t.db) biasBackward(rec, t.db, t.dy, true);
  const ad = t.adapter;
  if (!ad) return;
  if (!t.xa || !t.scratch) throw new Error("linearBackward: an adapter needs x·Aᵀ and scratch");
  const [T, out] = t.dy.shape;
  const r = ad.A.shape[0];
  const dyB = prefix(t.scratch.dyB, [T, r]);
  if (scales.gamma === null) {
    matmulTN(rec, ad.gB, t.dy, t.xa, { alpha: scales.scale, beta: 1 });
    matmulNN(rec, dyB, t.dy, ad.B);
    matmulTN(rec, ad.gA, dyB, t.x, { alpha: scales.scale, beta: 1, norm });
    if (t.dx && scales.sigma !== 0) {
      matmulNN(rec, t.dx, dyB, ad.A, { alpha: scales.sigma, beta: 1 });
    }
    return;
  }
  if (!t.scratch.dH) throw new Error("linearBackward: numeric mute without dH scratch");
  const dH = prefix(t.scratch.dH, [T, out]);
  const inv = Math.fround(scales.rescale ?? 1 / scales.gamma);
  scale(rec, dH, t.dy, scales.sigma);
  matmulTN(rec, ad.gB, dH, t.xa, { alpha: inv, beta: 1 });
  matmulNN(rec, dyB, dH, ad.B);
  matmulTN(rec, ad.gA, dyB, t.x, { alpha: inv, beta: 1, norm });
  if (t.dx) matmulNN(rec, t.dx, dyB, ad.A, { beta: 1 });
}

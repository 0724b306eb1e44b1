/**
 * Initial adapter factors for each method (docs/architecture.md §2): HD-PiSSA's K orthogonal slices of the
 * principal singular components, PiSSA's top-r slice with the residual weight, and LoRA's
 * Kaiming-uniform A with B = 0. The SVD runs once in float64; the factors are rounded to f32.
 */

import { DomainError } from "../../core/errors.ts";
import { z } from "zod";
import type { HostTensor } from "../../model/safetensors.ts";
import type { Rng } from "../../core/rng.ts";
import { type SvdResult, topSvd, type TopSvdOptions } from "../linalg/svd.ts";

/** Adapter factors that cannot be built for a matrix (rank too large, bad arguments). */
export class AdapterInitError extends DomainError {
  static override readonly code: string = "ADAPTER_INIT";
  static readonly fields = z.object({ matrix: z.string().optional() });
  /** The weight's name, when the caller gave one. */
  readonly matrix?: string;
  constructor(message: string, matrix?: string) {
    super(message);
    this.matrix = matrix;
  }
}

/** One adapter: `A [r, in]`, `B [out, r]`, row-major f32. */
export interface AdapterFactors {
  A: Float32Array;
  B: Float32Array;
}

/** Options shared by the SVD-based initialisations. */
export interface SvdInitOptions {
  /** The weight's name, for error messages. */
  name?: string;
  /** Exact (default) or randomized SVD, and the randomized SVD's settings. */
  svd?: TopSvdOptions;
}

/** s = alpha / r. */
export function adapterScale(rank: number, alpha: number): number {
  return alpha / rank;
}

function label(name: string | undefined): string {
  return name ? `"${name}"` : "the matrix";
}

function checkWeight(W: HostTensor, name: string | undefined): [number, number] {
  if (W.shape.length !== 2 || W.data.length !== W.shape[0] * W.shape[1]) {
    throw new AdapterInitError(
      `${label(name)}: expected a 2-D weight [out, in] holding its values, got shape ` +
        `[${W.shape}] with ${W.data.length} values`,
      name,
    );
  }
  for (let i = 0; i < W.data.length; i++) {
    if (!Number.isFinite(W.data[i])) {
      throw new AdapterInitError(`${label(name)}: entry ${i} is ${W.data[i]}`, name);
    }
  }
  return [W.shape[0], W.shape[1]];
}

function checkPositiveInt(v: number, what: string, name: string | undefined): void {
  if (!Number.isInteger(v) || v < 1) {
    throw new AdapterInitError(
      `${label(name)}: ${what} must be a positive integer, got ${v}`,
      name,
    );
  }
}

function checkAlpha(alpha: number, name: string | undefined): void {
  if (!Number.isFinite(alpha) || alpha <= 0) {
    throw new AdapterInitError(`${label(name)}: alpha must be positive, got ${alpha}`, name);
  }
}

/** The factors of components [first, first + r) of an SVD, each split as sqrt(S_i / s). */
function sliceFactors(
  sv: SvdResult,
  first: number,
  r: number,
  s: number,
): AdapterFactors {
  const { m: out, n: inDim, k } = sv;
  const A = new Float32Array(r * inDim);
  const B = new Float32Array(out * r);
  for (let j = 0; j < r; j++) {
    const i = first + j;
    const root = Math.sqrt(sv.S[i] / s);
    for (let c = 0; c < inDim; c++) A[j * inDim + c] = root * sv.Vt[i * inDim + c];
    for (let o = 0; o < out; o++) B[o * r + j] = sv.U[o * k + i] * root;
  }
  return { A, B };
}

/**
 * HD-PiSSA: all K slices of the principal components of `W [out, in]`. Slice k holds singular
 * triplets i ∈ [k·r, (k+1)·r): `A_k = diag(sqrt(S_i/s)) V_iᵀ`, `B_k = U_i diag(sqrt(S_i/s))`,
 * so that `s·B_k A_k = U_i S_i V_iᵀ`. Requires K·r ≤ min(out, in).
 */
export function hdPissaSlices(
  W: HostTensor,
  workers: number,
  rank: number,
  alpha: number,
  options: SvdInitOptions = {},
): AdapterFactors[] {
  const { name } = options;
  const [out, inDim] = checkWeight(W, name);
  checkPositiveInt(workers, "the number of workers K", name);
  checkPositiveInt(rank, "the rank r", name);
  checkAlpha(alpha, name);
  const total = workers * rank;
  if (total > Math.min(out, inDim)) {
    throw new AdapterInitError(
      `${label(name)} [${out}, ${inDim}] has rank at most ${Math.min(out, inDim)}, but ` +
        `K·r = ${workers}·${rank} = ${total} components are needed; lower --rank or --workers`,
      name,
    );
  }
  const sv = topSvd(W.data, out, inDim, total, options.svd);
  const s = adapterScale(rank, alpha);
  return Array.from({ length: workers }, (_, k) => sliceFactors(sv, k * rank, rank, s));
}

/** PiSSA's factors plus the residual weight `W_res = W − s·B·A` (from the f32 factors). */
export interface PissaInit extends AdapterFactors {
  residual: Float32Array;
}

/**
 * PiSSA: the top-r slice (HD-PiSSA's k = 0) and `W_res = W − s·B·A`, computed in float64 from
 * the f32-rounded factors so that `W_res + s·B·A` gives W back to f32 rounding.
 */
export function pissaInit(
  W: HostTensor,
  rank: number,
  alpha: number,
  options: SvdInitOptions = {},
): PissaInit {
  const [{ A, B }] = hdPissaSlices(W, 1, rank, alpha, options);
  const [out, inDim] = W.shape;
  const s = adapterScale(rank, alpha);
  const residual = new Float32Array(out * inDim);
  for (let o = 0; o < out; o++) {
    for (let c = 0; c < inDim; c++) {
      let ba = 0;
      for (let j = 0; j < rank; j++) ba += B[o * rank + j] * A[j * inDim + c];
      residual[o * inDim + c] = W.data[o * inDim + c] - s * ba;
    }
  }
  return { A, B, residual };
}

/**
 * LoRA: `A [r, in]` from PyTorch's `kaiming_uniform_(a = √5)` as PEFT uses it, i.e. uniform in
 * ±sqrt(6 / ((1 + a²)·fan_in)) = ±1/sqrt(in); `B [out, r] = 0`. Draws r·in values from `rng`
 * in row-major order, so workers seeded alike get the same A.
 */
export function loraInit(
  shape: readonly [number, number],
  rank: number,
  rng: Rng,
  name?: string,
): AdapterFactors {
  const [out, inDim] = shape;
  checkPositiveInt(out, "out", name);
  checkPositiveInt(inDim, "in", name);
  checkPositiveInt(rank, "the rank r", name);
  const a = Math.sqrt(5);
  const bound = Math.sqrt(6 / ((1 + a * a) * inDim));
  const A = new Float32Array(rank * inDim);
  for (let i = 0; i < A.length; i++) A[i] = rng.uniform(-bound, bound);
  return { A, B: new Float32Array(out * rank) };
}

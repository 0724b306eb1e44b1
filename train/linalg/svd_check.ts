/**
 * Matrices with a known SVD, and how far a computed top SVD is from it: used by the SVD tests and
 * by `deno task bench svd` at real sizes, where the exact SVD would be too slow to serve as truth.
 */

import { Rng } from "../../core/rng.ts";
import { gemmNT, orthonormalColumns, singularValues, type SvdResult } from "./svd.ts";

/** `W = U diag(s) Vᵀ` with its factors: `U [m, k]`, `V [n, k]` orthonormal, s descending. */
export interface KnownSpectrum {
  W: Float32Array | Float64Array;
  U: Float64Array;
  V: Float64Array;
  s: Float64Array;
}

/**
 * A matrix `[m, n]` with the given descending spectrum and random orthonormal singular vectors
 * (Householder QR of Gaussian matrices). `float32` stores W as the model weights are stored.
 */
export function knownSpectrumMatrix(
  m: number,
  n: number,
  s: ArrayLike<number>,
  seed: number,
  float32 = false,
): KnownSpectrum {
  const k = s.length;
  const rng = new Rng(seed);
  const gauss = (len: number) => {
    const g = new Float64Array(len);
    for (let i = 0; i < len; i++) g[i] = rng.normal();
    return g;
  };
  const U = orthonormalColumns(gauss(m * k), m, k);
  const V = orthonormalColumns(gauss(n * k), n, k);
  const Us = new Float64Array(m * k);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < k; j++) Us[i * k + j] = U[i * k + j] * s[j];
  }
  const W64 = gemmNT(Us, V, m, n, k);
  return { W: float32 ? Float32Array.from(W64) : W64, U, V, s: Float64Array.from(s) };
}

/** How a computed top SVD compares with the truth. */
export interface SvdAgreement {
  /** ‖UᵀU − I‖∞ and ‖Vt Vtᵀ − I‖∞ (largest entry), the larger of the two. */
  orthonormality: number;
  /** max over the top k of |S_i − s_i| / s_i. */
  singularValueError: number;
  /** sin of the largest principal angle between the computed and true top-k left subspaces. */
  leftAngle: number;
  /** The same for the right subspaces. */
  rightAngle: number;
}

function gramDeviation(X: Float64Array, rows: number, len: number): number {
  const G = gemmNT(X, X, rows, rows, len);
  let worst = 0;
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < rows; j++) {
      worst = Math.max(worst, Math.abs(G[i * rows + j] - (i === j ? 1 : 0)));
    }
  }
  return worst;
}

/** Columns `[0, k)` of `X [rows, cols]` as rows: `[k, rows]`. */
function leadingColumnsAsRows(X: Float64Array, rows: number, cols: number, k: number) {
  const T = new Float64Array(k * rows);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < k; j++) T[j * rows + i] = X[i * cols + j];
  }
  return T;
}

/** sin θ_max between the row spaces of `A [k, len]` and `B [k, len]` (orthonormal rows). */
function sinLargestAngle(A: Float64Array, B: Float64Array, k: number, len: number): number {
  const cos = singularValues(gemmNT(A, B, k, k, len), k, k);
  const c = Math.min(1, cos[k - 1]);
  return Math.sqrt(Math.max(0, 1 - c * c));
}

/** Compares `r` (top `r.k` triplets) with the known SVD `t`. */
export function svdAgreement(r: SvdResult, t: KnownSpectrum): SvdAgreement {
  const { m, n, k } = r;
  const tk = t.s.length;
  const Ur = leadingColumnsAsRows(r.U, m, k, k);
  let sErr = 0;
  for (let i = 0; i < k; i++) sErr = Math.max(sErr, Math.abs(r.S[i] - t.s[i]) / t.s[i]);
  return {
    orthonormality: Math.max(gramDeviation(Ur, k, m), gramDeviation(r.Vt, k, n)),
    singularValueError: sErr,
    leftAngle: sinLargestAngle(Ur, leadingColumnsAsRows(t.U, m, tk, k), k, m),
    rightAngle: sinLargestAngle(r.Vt, leadingColumnsAsRows(t.V, n, tk, k), k, n),
  };
}

/**
 * Singular value decompositions in float64 on the CPU.
 *
 * - `svd`: the exact SVD by Householder bidiagonalisation followed by implicit-shift QR on the
 *   bidiagonal (Golub–Kahan–Reinsch), for any shape; singular values descending.
 * - `randomizedSvd`: the top singular triplets by randomized subspace iteration (Halko, Martinsson
 *   and Tropp 2011, Alg. 4.4): a Gaussian test matrix, `niter` power iterations with a QR between
 *   every product, then the exact SVD of the small projected matrix. This is what PEFT's
 *   `pissa_niter_N` does through `torch.svd_lowrank`.
 *
 * Matrices are row-major. Every factor is orthonormal to rounding (Householder and Givens
 * transformations only), and the same input always gives the same bits.
 */

import { DomainError } from "../../core/errors.ts";
import { Rng } from "../../core/rng.ts";

/** An SVD that cannot be computed: bad shape, non-finite entries, no convergence. */
export class SvdError extends DomainError {
  static override readonly code: string = "SVD";
}

/** `A ≈ U diag(S) Vt` with `U [m, k]`, `S [k]` descending, `Vt [k, n]`. */
export interface SvdResult {
  m: number;
  n: number;
  k: number;
  U: Float64Array;
  S: Float64Array;
  Vt: Float64Array;
}

function checkMatrix(A: ArrayLike<number>, m: number, n: number): void {
  if (!Number.isInteger(m) || !Number.isInteger(n) || m < 1 || n < 1) {
    throw new SvdError(`matrix shape [${m}, ${n}] is not a positive integer shape`);
  }
  if (A.length !== m * n) {
    throw new SvdError(`matrix [${m}, ${n}] needs ${m * n} values, got ${A.length}`);
  }
  for (let i = 0; i < A.length; i++) {
    if (!Number.isFinite(A[i])) {
      throw new SvdError(`matrix entry [${Math.floor(i / n)}, ${i % n}] is ${A[i]}`);
    }
  }
}

function transpose(A: ArrayLike<number>, m: number, n: number): Float64Array {
  const T = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) T[j * m + i] = A[i * n + j];
  }
  return T;
}

/**
 * Householder reflector `H = I − τ v vᵀ` (v[0] = 1) with `H x = β e₁`, for `x` the entries of
 * `a` at `start + i·stride`, `i < len`. Overwrites x[1..] with v[1..] and returns [τ, β]
 * (τ = 0 when x[1..] is already zero: H = I and β = x[0]).
 */
function reflector(
  a: Float64Array,
  start: number,
  stride: number,
  len: number,
): [number, number] {
  const alpha = a[start];
  let ss = 0;
  for (let i = 1; i < len; i++) ss += a[start + i * stride] ** 2;
  if (ss === 0) return [0, alpha];
  const beta = alpha >= 0 ? -Math.sqrt(alpha * alpha + ss) : Math.sqrt(alpha * alpha + ss);
  const tau = (beta - alpha) / beta;
  const inv = 1 / (alpha - beta);
  for (let i = 1; i < len; i++) a[start + i * stride] *= inv;
  return [tau, beta];
}

/**
 * Applies the reflector stored in column `j` of `a [m, n]` (rows j..m−1, v[0] = 1 implied) from
 * the left to `b [m, nb]`, rows j.., columns c0..: `b ← (I − τ v vᵀ) b`.
 */
function applyColumnReflector(
  a: Float64Array,
  n: number,
  j: number,
  tau: number,
  b: Float64Array,
  m: number,
  nb: number,
  c0: number,
  w: Float64Array,
): void {
  if (tau === 0) return;
  w.fill(0, c0, nb);
  for (let i = j; i < m; i++) {
    const vi = i === j ? 1 : a[i * n + j];
    const row = i * nb;
    for (let c = c0; c < nb; c++) w[c] += vi * b[row + c];
  }
  for (let i = j; i < m; i++) {
    const f = tau * (i === j ? 1 : a[i * n + j]);
    const row = i * nb;
    for (let c = c0; c < nb; c++) b[row + c] -= f * w[c];
  }
}

/**
 * Thin orthonormal basis `Q [m, l]` of the columns of `Y [m, l]` (m ≥ l) by Householder QR; Q is
 * orthonormal to rounding even when Y is rank-deficient.
 */
export function orthonormalColumns(Y: ArrayLike<number>, m: number, l: number): Float64Array {
  if (l > m) throw new SvdError(`orthonormalColumns needs m >= l, got [${m}, ${l}]`);
  const a = Float64Array.from(Y);
  const taus = new Float64Array(l);
  const w = new Float64Array(l);
  for (let j = 0; j < l; j++) {
    taus[j] = reflector(a, j * l + j, l, m - j)[0];
    applyColumnReflector(a, l, j, taus[j], a, m, l, j + 1, w);
  }
  const Q = new Float64Array(m * l);
  for (let j = 0; j < l; j++) Q[j * l + j] = 1;
  for (let j = l - 1; j >= 0; j--) applyColumnReflector(a, l, j, taus[j], Q, m, l, j, w);
  return Q;
}

/** Rotates rows i and j of `X` (row length L): `x_i ← c x_i + s x_j`, `x_j ← −s x_i + c x_j`. */
function rotateRows(X: Float64Array, L: number, i: number, j: number, c: number, s: number) {
  const oi = i * L;
  const oj = j * L;
  for (let x = 0; x < L; x++) {
    const a = X[oi + x];
    const b = X[oj + x];
    X[oi + x] = c * a + s * b;
    X[oj + x] = c * b - s * a;
  }
}

interface TallSvd {
  /** Left singular vectors as rows: `[n, m]`. */
  Ut: Float64Array | null;
  S: Float64Array;
  /** Right singular vectors as rows: `[n, n]`. */
  Vt: Float64Array | null;
}

/** The SVD of `a [m, n]` with m ≥ n (a is overwritten). */
function svdTall(a: Float64Array, m: number, n: number, vectors: boolean): TallSvd {
  // Scaling to max |a| = 1 keeps the squares in the shift computation far from overflow.
  let amax = 0;
  for (let i = 0; i < a.length; i++) amax = Math.max(amax, Math.abs(a[i]));
  if (amax === 0) amax = 1;
  for (let i = 0; i < a.length; i++) a[i] /= amax;

  // 1. Bidiagonalise: a = Q_B · bidiag(d, e) · P_Bᵀ, reflectors stored in a.
  const d = new Float64Array(n);
  const e = new Float64Array(n);
  const tauL = new Float64Array(n);
  const tauR = new Float64Array(n);
  const w = new Float64Array(Math.max(m, n));
  for (let j = 0; j < n; j++) {
    const [tl, bl] = reflector(a, j * n + j, n, m - j);
    tauL[j] = tl;
    d[j] = bl;
    applyColumnReflector(a, n, j, tl, a, m, n, j + 1, w);
    if (j < n - 1) {
      const [tr, br] = reflector(a, j * n + j + 1, 1, n - j - 1);
      tauR[j] = tr;
      e[j] = br;
      if (tr !== 0) {
        // a[j+1:, j+1:] ← a[j+1:, j+1:] (I − τ u uᵀ), u in row j from column j+1 (u[0] = 1).
        const u0 = j * n + j + 1;
        for (let i = j + 1; i < m; i++) {
          const row = i * n + j + 1;
          let dot = a[row];
          for (let c = 1; c < n - j - 1; c++) dot += a[row + c] * a[u0 + c];
          dot *= tr;
          a[row] -= dot;
          for (let c = 1; c < n - j - 1; c++) a[row + c] -= dot * a[u0 + c];
        }
      }
    }
  }

  // 2. Accumulate the thin left factor [m, n] and the right factor [n, n], then keep them as
  // rows so that every Givens rotation below touches two contiguous rows.
  let Ut: Float64Array | null = null;
  let Vt: Float64Array | null = null;
  if (vectors) {
    const U = new Float64Array(m * n);
    for (let j = 0; j < n; j++) U[j * n + j] = 1;
    for (let j = n - 1; j >= 0; j--) applyColumnReflector(a, n, j, tauL[j], U, m, n, j, w);
    Ut = transpose(U, m, n);
    const V = new Float64Array(n * n);
    for (let j = 0; j < n; j++) V[j * n + j] = 1;
    for (let j = n - 2; j >= 0; j--) {
      const tr = tauR[j];
      if (tr === 0) continue;
      // V[j+1:, j+1:] ← (I − τ u uᵀ) V[j+1:, j+1:], u in row j of a from column j+1.
      const u0 = j * n + j + 1;
      const len = n - j - 1;
      w.fill(0, 0, n);
      for (let i = 0; i < len; i++) {
        const ui = i === 0 ? 1 : a[u0 + i];
        const row = (j + 1 + i) * n;
        for (let c = j + 1; c < n; c++) w[c] += ui * V[row + c];
      }
      for (let i = 0; i < len; i++) {
        const f = tr * (i === 0 ? 1 : a[u0 + i]);
        const row = (j + 1 + i) * n;
        for (let c = j + 1; c < n; c++) V[row + c] -= f * w[c];
      }
    }
    Vt = transpose(V, n, n);
  }

  // 3. Implicit-shift QR on the bidiagonal until every superdiagonal entry is negligible.
  const eps = 2 ** -52;
  let bnorm = 0;
  for (let i = 0; i < n; i++) bnorm = Math.max(bnorm, Math.abs(d[i]) + Math.abs(e[i]));
  const dTiny = eps * bnorm;
  const maxSteps = 100 * n + 100;
  let steps = 0;
  let hi = n - 1;
  while (hi > 0) {
    let lo = hi;
    while (lo > 0) {
      const ei = e[lo - 1];
      if (Math.abs(ei) <= eps * (Math.abs(d[lo - 1]) + Math.abs(d[lo])) || Math.abs(ei) < 1e-300) {
        e[lo - 1] = 0;
        break;
      }
      lo--;
    }
    if (lo === hi) {
      hi--;
      continue;
    }
    // Block lo..hi has all its superdiagonal entries nonzero. A zero on its diagonal splits it
    // after the nonzero superdiagonal entry next to it is chased out.
    let zeroAt = -1;
    for (let i = lo; i <= hi; i++) {
      if (Math.abs(d[i]) <= dTiny) {
        zeroAt = i;
        break;
      }
    }
    if (zeroAt >= 0) {
      const i = zeroAt;
      d[i] = 0;
      if (i < hi) {
        // Left rotations of rows (j, i) push the entry of row i to the right and out.
        let f = e[i];
        e[i] = 0;
        for (let j = i + 1; j <= hi; j++) {
          const r = Math.hypot(d[j], f);
          const c = d[j] / r;
          const s = f / r;
          d[j] = r;
          if (Ut) rotateRows(Ut, m, j, i, c, s);
          if (j < hi) {
            f = -s * e[j];
            e[j] = c * e[j];
          }
        }
      } else {
        // Right rotations of columns (j, hi) push the entry of column hi up and out.
        let f = e[hi - 1];
        e[hi - 1] = 0;
        for (let j = hi - 1; j >= lo; j--) {
          const r = Math.hypot(d[j], f);
          const c = d[j] / r;
          const s = f / r;
          d[j] = r;
          if (Vt) rotateRows(Vt, n, j, hi, c, s);
          if (j > lo) {
            f = -s * e[j - 1];
            e[j - 1] = c * e[j - 1];
          }
        }
      }
      continue;
    }

    if (++steps > maxSteps) {
      throw new SvdError(`SVD did not converge after ${maxSteps} QR steps ([${m}, ${n}])`);
    }
    // Wilkinson shift: the eigenvalue of the trailing 2×2 of BᵀB nearer its last entry.
    const dm = d[hi - 1];
    const dn = d[hi];
    const em = e[hi - 1];
    const el = hi - 1 > lo ? e[hi - 2] : 0;
    const t11 = dm * dm + el * el;
    const t12 = dm * em;
    const t22 = dn * dn + em * em;
    const delta = (t11 - t22) / 2;
    const mu = delta === 0
      ? t22 - Math.abs(t12)
      : t22 - (t12 * t12) / (delta + Math.sign(delta) * Math.hypot(delta, t12));
    let y = d[lo] * d[lo] - mu;
    let z = d[lo] * e[lo];
    for (let k = lo; k < hi; k++) {
      // Right rotation of columns (k, k+1): zeroes z against y (the bulge above the diagonal).
      let r = Math.hypot(y, z);
      let c = r === 0 ? 1 : y / r;
      let s = r === 0 ? 0 : z / r;
      if (k > lo) e[k - 1] = r;
      const dk = d[k];
      const ek = e[k];
      d[k] = c * dk + s * ek;
      e[k] = c * ek - s * dk;
      const bulge = s * d[k + 1];
      d[k + 1] = c * d[k + 1];
      if (Vt) rotateRows(Vt, n, k, k + 1, c, s);
      // Left rotation of rows (k, k+1): zeroes the bulge below the diagonal.
      y = d[k];
      z = bulge;
      r = Math.hypot(y, z);
      c = r === 0 ? 1 : y / r;
      s = r === 0 ? 0 : z / r;
      d[k] = r;
      const ek2 = e[k];
      const dk1 = d[k + 1];
      e[k] = c * ek2 + s * dk1;
      d[k + 1] = c * dk1 - s * ek2;
      if (Ut) rotateRows(Ut, m, k, k + 1, c, s);
      if (k < hi - 1) {
        y = e[k];
        z = s * e[k + 1];
        e[k + 1] = c * e[k + 1];
      }
    }
  }

  // 4. Non-negative singular values, in descending order.
  for (let i = 0; i < n; i++) {
    if (d[i] < 0) {
      d[i] = -d[i];
      if (Vt) { for (let x = 0; x < n; x++) Vt[i * n + x] = -Vt[i * n + x]; }
    }
  }
  for (let i = 0; i < n - 1; i++) {
    let best = i;
    for (let j = i + 1; j < n; j++) if (d[j] > d[best]) best = j;
    if (best === i) continue;
    [d[i], d[best]] = [d[best], d[i]];
    if (Ut) swapRows(Ut, m, i, best);
    if (Vt) swapRows(Vt, n, i, best);
  }
  for (let i = 0; i < n; i++) d[i] *= amax;
  return { Ut, S: d, Vt };
}

function swapRows(X: Float64Array, L: number, i: number, j: number): void {
  for (let x = 0; x < L; x++) {
    const t = X[i * L + x];
    X[i * L + x] = X[j * L + x];
    X[j * L + x] = t;
  }
}

/** The exact SVD of `A [m, n]`: `U [m, k]`, `S [k]` descending, `Vt [k, n]`, k = min(m, n). */
export function svd(A: ArrayLike<number>, m: number, n: number): SvdResult {
  checkMatrix(A, m, n);
  if (m >= n) {
    const r = svdTall(Float64Array.from(A), m, n, true);
    return { m, n, k: n, U: transpose(r.Ut!, n, m), S: r.S, Vt: r.Vt! };
  }
  // Aᵀ = U' S V'ᵀ gives A = V' S U'ᵀ.
  const r = svdTall(transpose(A, m, n), n, m, true);
  return { m, n, k: m, U: transpose(r.Vt!, m, m), S: r.S, Vt: r.Ut! };
}

/** The singular values of `A [m, n]`, descending (cheaper than `svd`: no vectors). */
export function singularValues(A: ArrayLike<number>, m: number, n: number): Float64Array {
  checkMatrix(A, m, n);
  return m >= n
    ? svdTall(Float64Array.from(A), m, n, false).S
    : svdTall(transpose(A, m, n), n, m, false).S;
}

/** Options of the randomized SVD. */
export interface RandomizedSvdOptions {
  /** Extra test vectors beyond the rank (default 10). */
  oversample?: number;
  /** Power iterations (default 4), each with a QR re-orthonormalisation. */
  niter?: number;
  /** Seed of the Gaussian test matrix (default 0); ignored when `rng` is given. */
  seed?: number;
  rng?: Rng;
}

/** Rows of the inner dimension summed per block: a block of `R` stays in the L2 cache. */
const GEMM_KB = 256;

/** A matrix operand of the products: float32 weights are read as they are stored. */
export type Real = Float64Array | Float32Array;

/**
 * `C [rows, cols] = P [rows, inner] · R [cols, inner]ᵀ`: both operands are read along their
 * contiguous inner dimension. The summation order is fixed (blocks of GEMM_KB in order), so the
 * bits do not depend on anything but the inputs.
 */
export function gemmNT(P: Real, R: Real, rows: number, cols: number, inner: number): Float64Array {
  const C = new Float64Array(rows * cols);
  gemmNTRows(P, R, cols, inner, C, 0, rows);
  return C;
}

/**
 * Rows `[r0, r1)` of `C = P · Rᵀ` (see `gemmNT`), written into `C` (zero there on entry). Every
 * element is summed in the same order, `Σ_block (Σ_{k in block} P[r,k]·R[c,k])` with the blocks
 * and the k within a block in ascending order, whatever range or register tile computes it: the
 * rows of C can be split across threads without changing a bit.
 *
 * The register tile is 4 rows × 4 columns (16 accumulators, 8 loads per 16 products), then
 * 4 × 2 and 4 × 1 for the last columns, and one row at a time for the last rows.
 */
export function gemmNTRows(
  P: Real,
  R: Real,
  cols: number,
  inner: number,
  C: Float64Array,
  r0: number,
  r1: number,
): void {
  for (let k0 = 0; k0 < inner; k0 += GEMM_KB) {
    const k1 = Math.min(inner, k0 + GEMM_KB);
    let r = r0;
    for (; r + 4 <= r1; r += 4) {
      const p0 = r * inner;
      const p1 = p0 + inner;
      const p2 = p1 + inner;
      const p3 = p2 + inner;
      const o0 = r * cols;
      const o1 = o0 + cols;
      const o2 = o1 + cols;
      const o3 = o2 + cols;
      let c = 0;
      for (; c + 4 <= cols; c += 4) {
        const q0 = c * inner;
        const q1 = q0 + inner;
        const q2 = q1 + inner;
        const q3 = q2 + inner;
        let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
        let s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
        for (let k = k0; k < k1; k++) {
          const x0 = R[q0 + k];
          const x1 = R[q1 + k];
          const x2 = R[q2 + k];
          const x3 = R[q3 + k];
          const a0 = P[p0 + k];
          s00 += a0 * x0;
          s01 += a0 * x1;
          s02 += a0 * x2;
          s03 += a0 * x3;
          const a1 = P[p1 + k];
          s10 += a1 * x0;
          s11 += a1 * x1;
          s12 += a1 * x2;
          s13 += a1 * x3;
          const a2 = P[p2 + k];
          s20 += a2 * x0;
          s21 += a2 * x1;
          s22 += a2 * x2;
          s23 += a2 * x3;
          const a3 = P[p3 + k];
          s30 += a3 * x0;
          s31 += a3 * x1;
          s32 += a3 * x2;
          s33 += a3 * x3;
        }
        C[o0 + c] += s00;
        C[o0 + c + 1] += s01;
        C[o0 + c + 2] += s02;
        C[o0 + c + 3] += s03;
        C[o1 + c] += s10;
        C[o1 + c + 1] += s11;
        C[o1 + c + 2] += s12;
        C[o1 + c + 3] += s13;
        C[o2 + c] += s20;
        C[o2 + c + 1] += s21;
        C[o2 + c + 2] += s22;
        C[o2 + c + 3] += s23;
        C[o3 + c] += s30;
        C[o3 + c + 1] += s31;
        C[o3 + c + 2] += s32;
        C[o3 + c + 3] += s33;
      }
      for (; c + 2 <= cols; c += 2) {
        const q0 = c * inner;
        const q1 = q0 + inner;
        let s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
        for (let k = k0; k < k1; k++) {
          const x0 = R[q0 + k];
          const x1 = R[q1 + k];
          const a0 = P[p0 + k];
          const a1 = P[p1 + k];
          const a2 = P[p2 + k];
          const a3 = P[p3 + k];
          s00 += a0 * x0;
          s01 += a0 * x1;
          s10 += a1 * x0;
          s11 += a1 * x1;
          s20 += a2 * x0;
          s21 += a2 * x1;
          s30 += a3 * x0;
          s31 += a3 * x1;
        }
        C[o0 + c] += s00;
        C[o0 + c + 1] += s01;
        C[o1 + c] += s10;
        C[o1 + c + 1] += s11;
        C[o2 + c] += s20;
        C[o2 + c + 1] += s21;
        C[o3 + c] += s30;
        C[o3 + c + 1] += s31;
      }
      for (; c < cols; c++) {
        const q0 = c * inner;
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (let k = k0; k < k1; k++) {
          const x0 = R[q0 + k];
          s0 += P[p0 + k] * x0;
          s1 += P[p1 + k] * x0;
          s2 += P[p2 + k] * x0;
          s3 += P[p3 + k] * x0;
        }
        C[o0 + c] += s0;
        C[o1 + c] += s1;
        C[o2 + c] += s2;
        C[o3 + c] += s3;
      }
    }
    for (; r < r1; r++) {
      const p0 = r * inner;
      for (let c = 0; c < cols; c++) {
        const q0 = c * inner;
        let s = 0;
        for (let k = k0; k < k1; k++) s += P[p0 + k] * R[q0 + k];
        C[r * cols + c] += s;
      }
    }
  }
}

/** A row-major copy in a typed array (float32 inputs stay float32: half the memory traffic). */
function packed(A: ArrayLike<number>): Real {
  return A instanceof Float32Array || A instanceof Float64Array ? A : Float64Array.from(A);
}

/**
 * Rows `[j0, j1)` of `T = Aᵀ [n, m]` for `A [m, n]`, by 64×64 tiles, written into `T` (of A's
 * element type): a copy, so any split of the rows gives the same bits.
 */
export function transposeRows(A: Real, m: number, n: number, T: Real, j0: number, j1: number) {
  const B = 64;
  for (let i0 = 0; i0 < m; i0 += B) {
    const i1 = Math.min(m, i0 + B);
    for (let jb = j0; jb < j1; jb += B) {
      const jb1 = Math.min(j1, jb + B);
      for (let i = i0; i < i1; i++) {
        for (let j = jb; j < jb1; j++) T[j * m + i] = A[i * n + j];
      }
    }
  }
}

/**
 * A product the randomized SVD needs: `A · Rᵀ` (`transposed` false, `[m, cols]`) or `Aᵀ · Rᵀ`
 * (`[n, cols]`), with `R [cols, inner]` row-major and inner = n or m.
 */
export interface SvdProduct {
  transposed: boolean;
  R: Float64Array;
  cols: number;
}

/** The checked settings of one randomized SVD. */
interface RandomizedPlan {
  rank: number;
  /** Columns of the sketch: rank + oversample, at most min(m, n). */
  l: number;
  niter: number;
  rng: Rng;
}

function randomizedPlan(
  A: ArrayLike<number>,
  m: number,
  n: number,
  rank: number,
  options: RandomizedSvdOptions,
): RandomizedPlan {
  checkMatrix(A, m, n);
  return randomizedShapePlan(m, n, rank, options);
}

/** The settings of a randomized SVD of an `[m, n]` matrix whose entries are not on the host. */
function randomizedShapePlan(
  m: number,
  n: number,
  rank: number,
  options: RandomizedSvdOptions,
): RandomizedPlan {
  if (!Number.isInteger(m) || !Number.isInteger(n) || m < 1 || n < 1) {
    throw new SvdError(`matrix shape [${m}, ${n}] is not a positive integer shape`);
  }
  const kmax = Math.min(m, n);
  if (!Number.isInteger(rank) || rank < 1 || rank > kmax) {
    throw new SvdError(`rank ${rank} must be an integer in [1, ${kmax}] for a [${m}, ${n}] matrix`);
  }
  const oversample = options.oversample ?? 10;
  const niter = options.niter ?? 4;
  if (!Number.isInteger(oversample) || oversample < 0) {
    throw new SvdError(`oversample ${oversample} must be a non-negative integer`);
  }
  if (!Number.isInteger(niter) || niter < 0) {
    throw new SvdError(`niter ${niter} must be a non-negative integer`);
  }
  const l = Math.min(rank + oversample, kmax);
  return { rank, l, niter, rng: options.rng ?? new Rng(options.seed ?? 0) };
}

/**
 * The randomized SVD as a sequence of products with A: it yields each product it needs and is
 * resumed with the result; everything else (the Gaussian sketch, the QRs, the small exact SVD)
 * happens here. The single-threaded `randomizedSvd` and the worker pool (`svd_pool.ts`) both run
 * this one sequence, so they differ only in who computes the products, and the products' bits do
 * not depend on that (`gemmNTRows`).
 */
function* randomizedSvdSteps(
  m: number,
  n: number,
  plan: RandomizedPlan,
): Generator<SvdProduct, SvdResult, Float64Array> {
  const { rank, l, niter, rng } = plan;
  const omega = new Float64Array(n * l);
  for (let i = 0; i < omega.length; i++) omega[i] = rng.normal();
  // Every product reads its operands along rows: A·X as A · (Xᵀ)ᵀ, Aᵀ·Q as Aᵀ · (Qᵀ)ᵀ with Aᵀ
  // transposed once by the caller.
  const times = function* (
    transposed: boolean,
    X: Float64Array,
    rows: number,
  ): Generator<SvdProduct, Float64Array, Float64Array> {
    return yield { transposed, R: transpose(X, rows, l), cols: l };
  };
  let Q = orthonormalColumns(yield* times(false, omega, n), m, l);
  for (let it = 0; it < niter; it++) {
    const Z = orthonormalColumns(yield* times(true, Q, m), n, l);
    Q = orthonormalColumns(yield* times(false, Z, n), m, l);
  }
  // B = Qᵀ A is [l, n]: Bᵀ = Aᵀ Q; its exact SVD B = Ub S Vt gives A ≈ (Q Ub) S Vt.
  const Bt = transpose(yield* times(true, Q, m), n, l);
  const small = svd(Bt, l, n);
  const U = new Float64Array(m * rank);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < l; j++) {
      const q = Q[i * l + j];
      if (q === 0) continue;
      for (let c = 0; c < rank; c++) U[i * rank + c] += q * small.U[j * small.k + c];
    }
  }
  return {
    m,
    n,
    k: rank,
    U,
    S: small.S.slice(0, rank),
    Vt: small.Vt.slice(0, rank * n),
  };
}

/** Checks the arguments of a randomized SVD and returns its settings and its product sequence. */
export function randomizedSvdPlan(
  A: ArrayLike<number>,
  m: number,
  n: number,
  rank: number,
  options: RandomizedSvdOptions = {},
): Generator<SvdProduct, SvdResult, Float64Array> {
  return randomizedSvdSteps(m, n, randomizedPlan(A, m, n, rank, options));
}

/**
 * The step sequence of `randomizedSvdPlan` for a matrix held elsewhere (on a GPU): only its
 * shape and the settings are checked here, so the caller must check that every product it
 * returns is finite (a non-finite entry of A shows there).
 */
export function randomizedSvdPlanOfShape(
  m: number,
  n: number,
  rank: number,
  options: RandomizedSvdOptions = {},
): Generator<SvdProduct, SvdResult, Float64Array> {
  return randomizedSvdSteps(m, n, randomizedShapePlan(m, n, rank, options));
}

/**
 * The top `rank` singular triplets of `A [m, n]` by randomized subspace iteration. With a
 * decaying spectrum and a few power iterations it matches the exact SVD's leading components;
 * U and Vt are orthonormal to rounding whatever the spectrum.
 */
export function randomizedSvd(
  A: ArrayLike<number>,
  m: number,
  n: number,
  rank: number,
  options: RandomizedSvdOptions = {},
): SvdResult {
  const steps = randomizedSvdPlan(A, m, n, rank, options);
  const a = packed(A);
  let at: Real | null = null;
  let next = steps.next();
  while (!next.done) {
    const { transposed, R, cols } = next.value;
    if (transposed && !at) {
      at = a instanceof Float32Array ? new Float32Array(m * n) : new Float64Array(m * n);
      transposeRows(a, m, n, at, 0, n);
    }
    next = steps.next(
      transposed ? gemmNT(at!, R, n, cols, m) : gemmNT(a, R, m, cols, n),
    );
  }
  return next.value;
}

/** How the leading components are found: the exact SVD, or the randomized one. */
export interface TopSvdOptions extends RandomizedSvdOptions {
  method?: "exact" | "randomized";
  /**
   * The randomized SVD of this matrix with these settings, already computed (by an `SvdPool`,
   * which gives the same bits): returned instead of computing it again. Its shape and rank must
   * be the ones asked for.
   */
  precomputed?: SvdResult;
}

/** The top `rank` singular triplets by the chosen method (exact by default), truncated. */
export function topSvd(
  A: ArrayLike<number>,
  m: number,
  n: number,
  rank: number,
  options: TopSvdOptions = {},
): SvdResult {
  if ((options.method ?? "exact") === "randomized") {
    const p = options.precomputed;
    if (!p) return randomizedSvd(A, m, n, rank, options);
    if (p.m !== m || p.n !== n || p.k !== rank) {
      throw new SvdError(
        `the precomputed SVD is [${p.m}, ${p.n}] of rank ${p.k}, not [${m}, ${n}] of rank ${rank}`,
      );
    }
    return p;
  }
  const full = svd(A, m, n);
  if (!Number.isInteger(rank) || rank < 1 || rank > full.k) {
    throw new SvdError(
      `rank ${rank} must be an integer in [1, ${full.k}] for a [${m}, ${n}] matrix`,
    );
  }
  const U = new Float64Array(m * rank);
  for (let i = 0; i < m; i++) {
    for (let c = 0; c < rank; c++) U[i * rank + c] = full.U[i * full.k + c];
  }
  return { m, n, k: rank, U, S: full.S.slice(0, rank), Vt: full.Vt.slice(0, rank * n) };
}

/**
 * The matmuls of a linear layer whose W [out, in] is held as row blocks (`RowParts`,
 * gpu/tensor.ts) because it is over the device's maxStorageBufferBindingSize. Row block i holds
 * the rows s_i .. s_i + n_i of W, so it owns the columns s_i .. s_i + n_i of y = x·Wᵀ and of dY:
 *
 *   forward   y[:, s_i..] = α·x·W_iᵀ (+ β·y[:, s_i..])     one NT matmul per block
 *   backward  dX = α·Σ_i dY[:, s_i..]·W_i (+ β·dX)           NN matmuls accumulating in order
 *             ∂W_i = α·dY[:, s_i..]ᵀ·x (+ β·∂W_i)            one TN matmul per block
 *   update    W_i += α·L[s_i.., :]·R                        (HD-PiSSA, an adapter merge)
 *
 * A column block of y or dY is not contiguous, so it goes through a [T, n_i] block buffer
 * (blockExtract / blockCopy). That block is never larger than y itself, so wherever the
 * activations fit a binding the blocks do too. Callers pass one flat f32 `block` scratch shared
 * by every call (dispatches are ordered, so reuse is safe); without it the recorder's scratch
 * is used, held until the submit.
 *
 * A W held as one block takes the plain matmul: the same dispatches, the same bits as before.
 * With several blocks, y is bit-identical (each element is one dot product); dX differs from
 * the whole product by the order of its sum over the blocks (one rounding per block).
 * @module
 */
import { GpuShapeError } from "../errors.ts";
import type { Recorder } from "../recorder.ts";
import { expect2d, type GpuTensor, isHalf, type RowParts } from "../tensor.ts";
import { type AdapterSteps, blockCopy, blockExtract, hdPissaPack } from "./hd_pissa.ts";
import { matmul, type NormOnLoad } from "./matmul.ts";

export interface RowsMatmulOptions {
  /** Scale of the product (default 1). */
  alpha?: number;
  /** Scale of the existing output (default 0). */
  beta?: number;
  /** Flat f32 scratch of at least T·max(n_i) elements for the column blocks (see the module doc). */
  block?: GpuTensor;
  /** RMSNorm on load of the activation (NT's x, TN's x), as the plain matmul's `norm`. */
  norm?: NormOnLoad;
  /**
   * NT only, with β = 0: `y = α·x·Wᵀ + R`. Each block starts from its columns of R, so the add
   * is still part of the product's pass.
   */
  residual?: GpuTensor;
}

/** The largest row count of the blocks. */
export function maxBlockRows(W: RowParts): number {
  return Math.max(...W.counts);
}

/** A [rows, cols] f32 view at the start of `flat`, or a recorder scratch when it is too small. */
function blockOf(
  rec: Recorder,
  flat: GpuTensor | undefined,
  rows: number,
  cols: number,
  label: string,
): GpuTensor {
  const n = rows * cols;
  if (flat && flat.dtype === "f32" && flat.shape.length === 1 && flat.size >= n) {
    return flat.rows(0, n).view([rows, cols], label);
  }
  return rec.scratch([rows, cols], "f32", label);
}

function checkParts(what: string, W: RowParts): void {
  let r = 0;
  W.parts.forEach((p, i) => {
    const [n, c] = expect2d(`${what} block ${i}`, p, p.dtype);
    if (W.starts[i] !== r || W.counts[i] !== n || c !== W.cols) {
      throw new GpuShapeError(`${what}: block ${i} ${p.describe()} does not continue the rows`);
    }
    r += n;
  });
  if (r !== W.rows) throw new GpuShapeError(`${what}: the blocks hold ${r} of ${W.rows} rows`);
}

function expectRows(what: string, t: GpuTensor, rows: number, cols: number): void {
  const [r, c] = expect2d(what, t);
  if (r !== rows || c !== cols) {
    throw new GpuShapeError(`${what}: expected f32[${rows}, ${cols}], got ${t.describe()}`);
  }
}

/** `y [T, out] = α·x [T, in]·Wᵀ + β·y` with W [out, in] in row blocks. */
export function matmulNTRows(
  rec: Recorder,
  y: GpuTensor,
  x: GpuTensor,
  W: RowParts,
  o: RowsMatmulOptions = {},
): void {
  checkParts("matmulNTRows W", W);
  const [T] = expect2d("matmulNTRows x", x);
  expectRows("matmulNTRows x", x, T, W.cols);
  expectRows("matmulNTRows y", y, T, W.rows);
  const alpha = o.alpha ?? 1, beta = o.beta ?? 0, { norm, residual } = o;
  if (residual && beta !== 0) {
    throw new GpuShapeError("matmulNTRows: a residual add needs β = 0 (y is written whole)");
  }
  if (residual) expectRows("matmulNTRows residual", residual, T, W.rows);
  if (W.parts.length === 1) {
    return matmul(rec, "NT", y, x, W.parts[0], { alpha, beta, norm, residual });
  }
  W.parts.forEach((part, i) => {
    const tmp = blockOf(rec, o.block, T, W.counts[i], `${W.label} y block`);
    const from = residual ?? (beta !== 0 ? y : null);
    if (from) blockExtract(rec, tmp, from, 0, W.starts[i]);
    matmul(rec, "NT", tmp, x, part, { alpha, beta: residual ? 1 : beta, norm });
    blockCopy(rec, y, tmp, null, 0, W.starts[i]);
  });
}

/** `dx [T, in] = α·dy [T, out]·W + β·dx` with W [out, in] in row blocks. */
export function matmulNNRows(
  rec: Recorder,
  dx: GpuTensor,
  dy: GpuTensor,
  W: RowParts,
  o: RowsMatmulOptions = {},
): void {
  checkParts("matmulNNRows W", W);
  const [T] = expect2d("matmulNNRows dy", dy);
  expectRows("matmulNNRows dy", dy, T, W.rows);
  expectRows("matmulNNRows dx", dx, T, W.cols);
  const alpha = o.alpha ?? 1, beta = o.beta ?? 0;
  if (W.parts.length === 1) return matmul(rec, "NN", dx, dy, W.parts[0], { alpha, beta });
  W.parts.forEach((part, i) => {
    const tmp = blockOf(rec, o.block, T, W.counts[i], `${W.label} dy block`);
    blockExtract(rec, tmp, dy, 0, W.starts[i]);
    matmul(rec, "NN", dx, tmp, part, { alpha, beta: i === 0 ? beta : 1 });
  });
}

/** `∂W_i = α·dy[:, s_i..]ᵀ·x + β·∂W_i` for every row block of ∂W [out, in]. */
export function matmulTNRows(
  rec: Recorder,
  dW: RowParts,
  dy: GpuTensor,
  x: GpuTensor,
  o: RowsMatmulOptions = {},
): void {
  checkParts("matmulTNRows dW", dW);
  const [T] = expect2d("matmulTNRows dy", dy);
  expectRows("matmulTNRows dy", dy, T, dW.rows);
  expectRows("matmulTNRows x", x, T, dW.cols);
  const alpha = o.alpha ?? 1, beta = o.beta ?? 0, norm = o.norm;
  if (dW.parts.length === 1) return matmul(rec, "TN", dW.parts[0], dy, x, { alpha, beta, norm });
  dW.parts.forEach((part, i) => {
    const tmp = blockOf(rec, o.block, T, dW.counts[i], `${dW.label} dy block`);
    blockExtract(rec, tmp, dy, 0, dW.starts[i]);
    matmul(rec, "TN", part, tmp, x, { alpha, beta, norm });
  });
}

export interface RowsUpdateOptions {
  /** Scale of the product. */
  alpha: number;
  /** Flat f32 scratch of at least max(n_i)·k elements for the row blocks of L. */
  block?: GpuTensor;
  /**
   * Flat f32 scratch of at least max(n_i)·in elements for a 16-bit W's product before its
   * rounded add (matmul's 16-bit C); default a recorder scratch per block.
   */
  scratch?: GpuTensor;
}

/** `W_i += α·L[s_i.., :]·R` for every row block of W [out, in] (L [out, k], R [k, in]). */
export function matmulNNIntoRows(
  rec: Recorder,
  W: RowParts,
  L: GpuTensor,
  R: GpuTensor,
  o: RowsUpdateOptions,
): void {
  checkParts("matmulNNIntoRows W", W);
  const [, k] = expect2d("matmulNNIntoRows L", L);
  expectRows("matmulNNIntoRows L", L, W.rows, k);
  expectRows("matmulNNIntoRows R", R, k, W.cols);
  const half = isHalf(W.parts[0].dtype);
  W.parts.forEach((part, i) => {
    const n = W.counts[i];
    const Li = W.parts.length === 1 ? L : blockOf(rec, o.block, n, k, `${W.label} L block`);
    if (Li !== L) blockExtract(rec, Li, L, W.starts[i], 0);
    const scratch = half && o.scratch && o.scratch.size >= n * W.cols
      ? o.scratch.rows(0, n * W.cols)
      : undefined;
    matmul(rec, "NN", part, Li, R, { alpha: o.alpha, beta: 1, scratch });
  });
}

/**
 * The HD-PiSSA update `W += f32(c·s)·L·R` (gpu/kernels/hd_pissa.ts) for a W in row blocks: L, R
 * packed once, then one NN matmul per block with its rows of L.
 */
export function hdPissaUpdateRows(
  rec: Recorder,
  W: RowParts,
  pairs: readonly AdapterSteps[],
  L: GpuTensor,
  R: GpuTensor,
  options: { c: number; s: number; block?: GpuTensor; scratch?: GpuTensor },
): void {
  hdPissaPack(rec, L, R, W, pairs);
  matmulNNIntoRows(rec, W, L, R, {
    alpha: Math.fround(options.c * options.s),
    block: options.block,
    scratch: options.scratch,
  });
}

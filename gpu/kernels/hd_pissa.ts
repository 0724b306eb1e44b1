/**
 * The HD-PiSSA weight update `W[out,in] += c·s·L·R` with
 *
 *   L = [ΔB_1 | B_1+ΔB_1 | … | ΔB_K | B_K+ΔB_K]   [out, 2Kr]
 *   R = [A_1 ; ΔA_1 ; … ; A_K ; ΔA_K]             [2Kr, in]
 *
 * so that L·R = Σ_j ΔB_j A_j + (B_j+ΔB_j) ΔA_j = Σ_j (B_j+ΔB_j)(A_j+ΔA_j) − B_j A_j. L and R
 * are packed on the device by `blockCopy`, then one NN matmul of inner size 2Kr accumulates
 * into W; the inner sum runs over j = 1..K in order, so every worker gets the same bits.
 *
 * A bf16/f16 W (`--weights-dtype`): the product is formed in f32 and added to W with one
 * rounding to nearest even per element and step (matmul's 16-bit C, gpu/kernels/packed.ts), in
 * integer arithmetic, so the workers' W still agree bit for bit. The rounding error this adds
 * over many steps is measured in tests/gpu_weights_dtype_test.ts (docs/architecture.md).
 * @module
 */
import { GpuShapeError } from "../errors.ts";
import { defineKernel } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { expect2d, expectShape, type GpuTensor, type Matrix, matrixShape } from "../tensor.ts";
import { FLAT_INDEX_WGSL, grid1d } from "./grid.ts";
import { matmul, type MatmulOptions } from "./matmul.ts";

const WG = 256;

const BLOCK_COPY = defineKernel({
  name: "block_copy",
  params: { rows: "u32", cols: "u32", dstCols: "u32", row0: "u32", col0: "u32", hasSrc2: "u32" },
  bindings: { dst: "read_write f32", src: "read f32", src2: "read f32?" },
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatIndex(gid, nwg, ${WG}u);
  if (i >= p.rows * p.cols) { return; }
  var v = src[i];
  if (p.hasSrc2 != 0u) { v = v + src2[i]; }
  dst[(p.row0 + i / p.cols) * p.dstCols + p.col0 + i % p.cols] = v;
}
`,
});

/**
 * `dst[row0 + i, col0 + j] = src[i, j] (+ src2[i, j])` for the whole of `src` [rows, cols];
 * dst is [R, C] with the block inside it.
 */
export function blockCopy(
  rec: Recorder,
  dst: GpuTensor,
  src: GpuTensor,
  src2: GpuTensor | null,
  row0: number,
  col0: number,
): void {
  const [R, C] = expect2d("blockCopy dst", dst);
  const [rows, cols] = expect2d("blockCopy src", src);
  if (src2) expectShape("blockCopy src2", src2, [rows, cols]);
  if (
    !Number.isInteger(row0) || !Number.isInteger(col0) || row0 < 0 || col0 < 0 ||
    row0 + rows > R || col0 + cols > C
  ) {
    throw new GpuShapeError(
      `blockCopy: a [${rows}, ${cols}] block at (${row0}, ${col0}) does not fit dst [${R}, ${C}]`,
    );
  }
  rec.dispatch(BLOCK_COPY, {
    bindings: { dst, src, src2 },
    params: { rows, cols, dstCols: C, row0, col0, hasSrc2: src2 ? 1 : 0 },
    grid: grid1d(rows * cols, WG),
  });
}

const BLOCK_EXTRACT = defineKernel({
  name: "block_extract",
  params: { rows: "u32", cols: "u32", srcCols: "u32", row0: "u32", col0: "u32" },
  bindings: { dst: "read_write f32", src: "read f32" },
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatIndex(gid, nwg, ${WG}u);
  if (i >= p.rows * p.cols) { return; }
  dst[i] = src[(p.row0 + i / p.cols) * p.srcCols + p.col0 + i % p.cols];
}
`,
});

/** `dst[i, j] = src[row0 + i, col0 + j]` for the whole of dst [rows, cols] (the inverse of blockCopy). */
export function blockExtract(
  rec: Recorder,
  dst: GpuTensor,
  src: GpuTensor,
  row0: number,
  col0: number,
): void {
  const [R, C] = expect2d("blockExtract src", src);
  const [rows, cols] = expect2d("blockExtract dst", dst);
  if (
    !Number.isInteger(row0) || !Number.isInteger(col0) || row0 < 0 || col0 < 0 ||
    row0 + rows > R || col0 + cols > C
  ) {
    throw new GpuShapeError(
      `blockExtract: a [${rows}, ${cols}] block at (${row0}, ${col0}) is outside src [${R}, ${C}]`,
    );
  }
  rec.dispatch(BLOCK_EXTRACT, {
    bindings: { dst, src },
    params: { rows, cols, srcCols: C, row0, col0 },
    grid: grid1d(rows * cols, WG),
  });
}

/** One worker's factors and steps for one adapted matrix W [out, in]. */
export interface AdapterSteps {
  /** [r, in] */
  A: GpuTensor;
  /** [out, r] */
  B: GpuTensor;
  /** [r, in] */
  dA: GpuTensor;
  /** [out, r] */
  dB: GpuTensor;
}

/** Checks the K pairs against W and returns r. */
function adapterRank(W: Matrix, pairs: readonly AdapterSteps[]): number {
  const dtype = "parts" in W ? W.parts[0].dtype : W.dtype;
  if (dtype === "i32") throw new GpuShapeError(`hdPissa W: expected a float matrix, got i32`);
  const [out, inn] = matrixShape(W);
  if (pairs.length === 0) throw new GpuShapeError("hdPissa: no adapter pairs");
  const [r] = expect2d("hdPissa A_1", pairs[0].A);
  pairs.forEach((q, j) => {
    expectShape(`hdPissa A_${j + 1}`, q.A, [r, inn]);
    expectShape(`hdPissa dA_${j + 1}`, q.dA, [r, inn]);
    expectShape(`hdPissa B_${j + 1}`, q.B, [out, r]);
    expectShape(`hdPissa dB_${j + 1}`, q.dB, [out, r]);
  });
  return r;
}

/** Packs L [out, 2Kr] and R [2Kr, in] from the K pairs (see the module doc). */
export function hdPissaPack(
  rec: Recorder,
  L: GpuTensor,
  R: GpuTensor,
  W: Matrix,
  pairs: readonly AdapterSteps[],
): void {
  const r = adapterRank(W, pairs);
  const [out, inn] = matrixShape(W);
  const inner = 2 * pairs.length * r;
  expectShape("hdPissa L", L, [out, inner]);
  expectShape("hdPissa R", R, [inner, inn]);
  pairs.forEach((q, j) => {
    blockCopy(rec, L, q.dB, null, 0, 2 * j * r);
    blockCopy(rec, L, q.B, q.dB, 0, 2 * j * r + r);
    blockCopy(rec, R, q.A, null, 2 * j * r, 0);
    blockCopy(rec, R, q.dA, null, 2 * j * r + r, 0);
  });
}

export interface HdPissaUpdateOptions {
  /** 1/K ("mean", default in the paper's text) or 1 ("sum"). */
  c: number;
  /** Adapter scaling alpha/r. */
  s: number;
  /** Matmul implementation override (tests). */
  variant?: MatmulOptions["variant"];
  /** f32 [out, in] scratch for a 16-bit W (default: a recorder scratch, see matmul). */
  scratch?: GpuTensor;
}

/**
 * `W += f32(c·s)·L·R` after packing L, R (preallocated scratch of shapes [out, 2Kr] and
 * [2Kr, in]) from `pairs` (j = 1..K in order).
 */
export function hdPissaUpdate(
  rec: Recorder,
  W: GpuTensor,
  pairs: readonly AdapterSteps[],
  L: GpuTensor,
  R: GpuTensor,
  options: HdPissaUpdateOptions,
): void {
  hdPissaPack(rec, L, R, W, pairs);
  matmul(rec, "NN", W, L, R, {
    alpha: Math.fround(options.c * options.s),
    beta: 1,
    variant: options.variant,
    scratch: options.scratch,
  });
}

/**
 * The randomized SVD with its passes over W on a WebGPU device: W·Ω, Wᵀ·Q and the power
 * iterations are f32 matmuls there (gpu/kernels/matmul.ts), while the Gaussian sketch, the thin
 * QRs and the small exact SVD stay on the host in float64 — the same step sequence as the CPU
 * paths (`randomizedSvdPlanOfShape` in `svd.ts`), with only the products computed elsewhere.
 *
 * W is held as row blocks (`RowParts`, `Gpu.uploadRows`), each within the device's binding limit:
 * a 4096×14336 f32 matrix (235 MB) is over lavapipe's 128 MiB. A product `W·X` is one matmul per
 * block into its own rows of the result; `Wᵀ·Q` sums the blocks' `W_bᵀ·Q_b` into one result in
 * block order (β = 1 after the first). The kernels sum in a fixed order, so a device gives the
 * same bits for the same input every time; two different devices need not agree bit for bit,
 * which is why a run computes each matrix's factors once and shares them.
 *
 * U and Vt are orthonormal to float64 rounding whatever the products' rounding (the QRs and the
 * small SVD are float64); the f32 products only move the subspace and the singular values by
 * about the f32 rounding of W·X (relative 1e-6 or so).
 * @module
 */
import { type Gpu, type GpuTensor, matmulNT, matmulTN, type RowParts } from "../../gpu/mod.ts";
import {
  type RandomizedSvdOptions,
  randomizedSvdPlanOfShape,
  SvdError,
  type SvdResult,
} from "./svd.ts";

/** `W [m, n]` (f32) on the device as row blocks within its binding limit. */
export function uploadForSvd(gpu: Gpu, W: Float32Array, m: number, n: number, label = "W") {
  if (W.length !== m * n) {
    throw new SvdError(`matrix [${m}, ${n}] needs ${m * n} values, got ${W.length}`);
  }
  return gpu.uploadRows(W, m, n, label);
}

/** Throws SvdError at the first non-finite entry of a product (W's entries are not checked). */
function checkFinite(C: Float64Array, what: string): void {
  for (let i = 0; i < C.length; i++) {
    if (!Number.isFinite(C[i])) {
      throw new SvdError(
        `${what} has a non-finite entry (${C[i]} at ${i}): W has a non-finite entry or its ` +
          "products overflow float32",
      );
    }
  }
}

/**
 * `W·Rᵀ [m, cols]` for `R [cols, n]` (row-major, float64 on the host): one matmul per row block
 * of W, each into its own result tensor.
 */
async function timesRt(gpu: Gpu, W: RowParts, R: Float64Array, cols: number) {
  const r = gpu.upload(Float32Array.from(R), [cols, W.cols], "svd R");
  const outs: GpuTensor[] = [];
  try {
    const rec = gpu.record({ label: "svd W·X" });
    for (const part of W.parts) {
      const c = gpu.tensor([part.shape[0], cols], "f32", "svd W·X");
      outs.push(c);
      matmulNT(rec, c, part, r);
    }
    const reads = outs.map((c) => rec.read(c));
    await rec.submit();
    const C = new Float64Array(W.rows * cols);
    const parts = await Promise.all(reads);
    parts.forEach((p, b) => C.set(p, W.starts[b] * cols));
    return C;
  } finally {
    gpu.release(r);
    for (const c of outs) gpu.release(c);
  }
}

/**
 * `Wᵀ·Rᵀ [n, cols]` for `R [cols, m]` (= Qᵀ): the blocks' `W_bᵀ·Q_b` summed in block order into
 * one tensor, with `Q_b` the rows of Q that block b covers.
 */
async function transposedTimesRt(gpu: Gpu, W: RowParts, R: Float64Array, cols: number) {
  const m = W.rows;
  const qs: GpuTensor[] = [];
  const c = gpu.tensor([W.cols, cols], "f32", "svd Wᵀ·Q");
  try {
    W.parts.forEach((_, b) => {
      const r0 = W.starts[b];
      const count = W.counts[b];
      const q = new Float32Array(count * cols);
      for (let i = 0; i < count; i++) {
        for (let j = 0; j < cols; j++) q[i * cols + j] = R[j * m + r0 + i];
      }
      qs.push(gpu.upload(q, [count, cols], "svd Q block"));
    });
    const rec = gpu.record({ label: "svd Wᵀ·Q" });
    W.parts.forEach((part, b) => matmulTN(rec, c, part, qs[b], { beta: b === 0 ? 0 : 1 }));
    const read = rec.read(c);
    await rec.submit();
    return Float64Array.from(await read);
  } finally {
    for (const q of qs) gpu.release(q);
    gpu.release(c);
  }
}

/**
 * The top `rank` singular triplets of `W` (on `gpu`, as row blocks) by randomized subspace
 * iteration, with the products on the device and everything else on the host (see the module
 * doc). The settings and their errors are those of `randomizedSvd`; a non-finite product (a
 * non-finite W, or an f32 overflow) is an SvdError.
 */
export async function gpuRandomizedSvd(
  gpu: Gpu,
  W: RowParts,
  rank: number,
  options: RandomizedSvdOptions = {},
): Promise<SvdResult> {
  const m = W.rows;
  const n = W.cols;
  const steps = randomizedSvdPlanOfShape(m, n, rank, options);
  let next = steps.next();
  while (!next.done) {
    const { transposed, R, cols } = next.value;
    const C = transposed
      ? await transposedTimesRt(gpu, W, R, cols)
      : await timesRt(gpu, W, R, cols);
    checkFinite(C, transposed ? "Wᵀ·Q" : "W·X");
    next = steps.next(C);
  }
  return next.value;
}

/**
 * `--slice-scale equal`: this project's own HD-PiSSA variant (not the paper's), off by default.
 * Slice k of HD-PiSSA holds singular triplets k·r … (k+1)·r − 1, so its factors
 * `A_k = diag(sqrt(S_i/s)) V_iᵀ`, `B_k = U_i diag(sqrt(S_i/s))` shrink with k: the gradients of
 * slices k ≥ 1 and the steps they make on W are smaller than slice 0's. The variant multiplies
 * slice k's A_k and B_k by `‖A_0‖_F / ‖A_k‖_F` (the same for both factors, since
 * ‖A_k‖_F = ‖B_k‖_F), so every slice has slice 0's size and keeps its own directions. Every
 * worker rescales the same factors the same way, so W stays identical on all of them.
 * @module
 */
import type { AdapterFactors } from "./adapter_init.ts";
import { WorkerStateError } from "./worker.ts";

/** How HD-PiSSA's slices are scaled (the `--slice-scale` flag). */
export type SliceScale = "svd" | "equal";

function frobenius(x: Float32Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return Math.sqrt(s);
}

/**
 * The factors each slice is multiplied by under `equal`: ‖A_0‖_F / ‖A_k‖_F (1 for slice 0).
 * A slice whose factors are all zero cannot be scaled up and is refused.
 */
export function equalisingFactors(slices: readonly AdapterFactors[], name = "matrix"): number[] {
  const norms = slices.map((f) => frobenius(f.A));
  return norms.map((n, k) => {
    if (!(n > 0) || !(norms[0] > 0)) {
      throw new WorkerStateError(`${name}: slice ${k} has a zero A; it cannot be rescaled`);
    }
    return k === 0 ? 1 : norms[0] / n;
  });
}

/** The slices scaled as `mode` says; `svd` returns them as they are. */
export function scaleSlices(
  slices: readonly AdapterFactors[],
  mode: SliceScale,
  name?: string,
): AdapterFactors[] {
  if (mode === "svd") return [...slices];
  const f = equalisingFactors(slices, name);
  return slices.map(({ A, B }, k) => ({
    A: A.map((v) => v * f[k]),
    B: B.map((v) => v * f[k]),
  }));
}

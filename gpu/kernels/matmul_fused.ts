/**
 * What the matmul kernels (register and tiled) share to fold a neighbouring pass over the
 * activations into the product:
 *
 * - RMSNorm on load: an operand X [T, F] is read as `gamma[f]·(X[t,f]·rstd[t])`, the f32
 *   operations of `rmsnormForward` in its order, so a product over the normalized input has the
 *   bits of the unfused one and the normalized [T, F] tensor is never written;
 * - a residual add in the store: `C = α·op(A)·op(B) + β·C + R`, written once.
 * @module
 */
import type { GpuTensor } from "../tensor.ts";

/**
 * Where t (the token) runs in a normalized operand: along its own rows ("r": NT's A, rows m) or
 * along k ("k": TN's B, k = t); f (the feature) is the other index.
 */
export type NormAxis = "r" | "k";

/** The tensors a dispatch binds for the fusions, null where unused. */
export interface Fused {
  /** The residual R [M, N]. */
  R: GpuTensor | null;
  /** rstd [T] and gamma [F] of a normalized operand. */
  nr: GpuTensor | null;
  ng: GpuTensor | null;
}

/**
 * `gamma·(x·rstd)` for a value `v` of a normalized operand (scalar or vec4), given its scale
 * along the operand's rows (`rs`) and along k (`ks`): with t along the rows, rs is rstd and ks
 * gamma; with t along k, the other way round.
 */
export function normed(axis: NormAxis, v: string, rs: string, ks: string): string {
  return axis === "r" ? `${ks} * (${v} * ${rs})` : `${rs} * (${v} * ${ks})`;
}

/** The binding holding a normalized operand's scale along its rows (`rows`) or along k. */
export function scaleArray(axis: NormAxis, rows: boolean): "nr" | "ng" {
  return (axis === "r") === rows ? "nr" : "ng";
}

/**
 * WGSL `fn store(<args>, acc: f32)`: `C[o] = α·acc (+ β·C[o])` when `inside`, and with `residual`
 * `+ R[o]` last, as the separate add it replaces did (`x + (x̂·Wᵀ)`); with α = 1, β = 0 that is
 * one rounding of acc + R whether or not the compiler contracts it into an fma. The residual is
 * a variant of its own, so that the other kernels keep their store unchanged (a branch per store
 * on a uniform flag measured a few per cent slower on lavapipe). Kernels using it declare
 * `alpha`, `beta` and the C and R bindings.
 */
export function storeWgsl(inside: string, offset: string, args: string, residual: boolean): string {
  const plain =
    "if (p.beta == 0.0) { C[o] = p.alpha * acc; } else { C[o] = p.alpha * acc + p.beta * C[o]; }";
  const res =
    "if (p.beta == 0.0) { C[o] = p.alpha * acc + R[o]; } else { C[o] = (p.alpha * acc + p.beta * C[o]) + R[o]; }";
  return /* wgsl */ `fn store(${args}, acc: f32) {
  if (${inside}) {
    let o = ${offset};
    ${residual ? res : plain}
  }
}`;
}

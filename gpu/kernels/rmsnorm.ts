/**
 * RMSNorm `y = w · (x / sqrt(mean(x²) + eps))` over the last dimension, forward and backward.
 *
 * One invocation per row runs the row's reduction in index order, so every result is
 * deterministic without workgroup reductions (which are slow on CPU adapters).
 * @module
 */
import type { KernelSpec } from "../pipeline_cache.ts";
import type { Recorder } from "../recorder.ts";
import { expect2d, expectShape, type GpuTensor } from "../tensor.ts";
import { FLAT_INDEX_WGSL, grid1d } from "./grid.ts";

const WG = 64;

const FORWARD: KernelSpec = {
  name: "rmsnorm_forward",
  bindings: ["read", "read", "rw", "rw"],
  params: "uuf",
  code: /* wgsl */ `
struct Params { T: u32, H: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = flatIndex(gid, nwg, ${WG}u);
  if (t >= p.T) { return; }
  let base = t * p.H;
  var ss = 0.0;
  for (var i = 0u; i < p.H; i++) {
    let v = x[base + i];
    ss = fma(v, v, ss);
  }
  let r = 1.0 / sqrt(ss / f32(p.H) + p.eps);
  rstd[t] = r;
  for (var i = 0u; i < p.H; i++) {
    y[base + i] = w[i] * (x[base + i] * r);
  }
}
`,
};

const BACKWARD: KernelSpec = {
  name: "rmsnorm_backward",
  bindings: ["rw", "read", "read", "read", "read"],
  params: "uuu",
  code: /* wgsl */ `
struct Params { T: u32, H: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;
@group(0) @binding(5) var<storage, read> rstd: array<f32>;
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = flatIndex(gid, nwg, ${WG}u);
  if (t >= p.T) { return; }
  let base = t * p.H;
  let r = rstd[t];
  var s = 0.0;
  for (var i = 0u; i < p.H; i++) {
    s = fma(dy[base + i] * w[i], x[base + i], s);
  }
  // d/dx_j of w_j x_j r with r = (mean(x²)+eps)^(-1/2): r w_j dy_j - x_j r³ (Σ_i dy_i w_i x_i) / H
  let c = s * r * r * r / f32(p.H);
  for (var i = 0u; i < p.H; i++) {
    let g = r * (w[i] * dy[base + i]) - x[base + i] * c;
    if (p.accumulate != 0u) { dx[base + i] = dx[base + i] + g; } else { dx[base + i] = g; }
  }
}
`,
};

const WEIGHT_GRAD: KernelSpec = {
  name: "rmsnorm_weight_grad",
  bindings: ["rw", "read", "read", "read"],
  params: "uuu",
  code: /* wgsl */ `
struct Params { T: u32, H: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dw: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> rstd: array<f32>;
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let j = flatIndex(gid, nwg, ${WG}u);
  if (j >= p.H) { return; }
  var s = 0.0;
  for (var t = 0u; t < p.T; t++) {
    s = fma(dy[t * p.H + j], x[t * p.H + j] * rstd[t], s);
  }
  if (p.accumulate != 0u) { dw[j] = dw[j] + s; } else { dw[j] = s; }
}
`,
};

/**
 * `y[t,:] = w ⊙ x[t,:] · rstd[t]` with `rstd[t] = 1/sqrt(mean(x[t,:]²) + eps)`.
 * Shapes: x, y [T, H]; w [H]; rstd [T] (saved for the backward pass).
 */
export function rmsnormForward(
  rec: Recorder,
  y: GpuTensor,
  rstd: GpuTensor,
  x: GpuTensor,
  w: GpuTensor,
  eps: number,
): void {
  const [T, H] = expect2d("rmsnorm x", x);
  expectShape("rmsnorm y", y, [T, H]);
  expectShape("rmsnorm w", w, [H]);
  expectShape("rmsnorm rstd", rstd, [T]);
  rec.dispatch(FORWARD, [x, w, y, rstd], [T, H, eps], grid1d(T, WG));
}

/**
 * Input gradient: `dx = rstd·(w ⊙ dy) − x·rstd³·(Σ dy⊙w⊙x)/H` per row; with `accumulate`,
 * `dx +=` instead of `dx =` (residual streams). Shapes as in `rmsnormForward`, dx, dy [T, H].
 */
export function rmsnormBackward(
  rec: Recorder,
  dx: GpuTensor,
  dy: GpuTensor,
  x: GpuTensor,
  w: GpuTensor,
  rstd: GpuTensor,
  accumulate = false,
): void {
  const [T, H] = expect2d("rmsnorm x", x);
  expectShape("rmsnorm dx", dx, [T, H]);
  expectShape("rmsnorm dy", dy, [T, H]);
  expectShape("rmsnorm w", w, [H]);
  expectShape("rmsnorm rstd", rstd, [T]);
  rec.dispatch(BACKWARD, [dx, dy, x, w, rstd], [T, H, accumulate ? 1 : 0], grid1d(T, WG));
}

/**
 * Weight gradient `dw[j] = Σ_t dy[t,j]·x[t,j]·rstd[t]`, summed over t in order; with
 * `accumulate`, `dw +=`. Shapes: dw [H], dy, x [T, H], rstd [T].
 */
export function rmsnormWeightGrad(
  rec: Recorder,
  dw: GpuTensor,
  dy: GpuTensor,
  x: GpuTensor,
  rstd: GpuTensor,
  accumulate = false,
): void {
  const [T, H] = expect2d("rmsnorm x", x);
  expectShape("rmsnorm dw", dw, [H]);
  expectShape("rmsnorm dy", dy, [T, H]);
  expectShape("rmsnorm rstd", rstd, [T]);
  rec.dispatch(WEIGHT_GRAD, [dw, dy, x, rstd], [T, H, accumulate ? 1 : 0], grid1d(H, WG));
}

/**
 * RMSNorm `y = w · (x / sqrt(mean(x²) + eps))` over the last dimension, forward and backward.
 *
 * One invocation per row runs the row's reduction in index order, so every result is
 * deterministic without workgroup reductions (which are slow on CPU adapters). It makes two
 * passes over the row: 2·(H + 1) loop passes, so H may reach 32,766 (see
 * `MAX_INVOCATION_LOOP`). The weight gradient sums over the rows in blocks of ROWS rows, one
 * invocation per (block, column), then sums the blocks in order; up to ROWS rows it is a single
 * pass straight into dw.
 * @module
 */
import { defineKernel } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { expect2d, expectShape, type GpuTensor } from "../tensor.ts";
import { FLAT_INDEX_WGSL, grid1d } from "./grid.ts";

const WG = 64;

// 1/sqrt(mean(x²) + eps) of the row at `base`, summed in index order. The forward and the
// norm-on-load pass both call it, so their rstd has the same bits.
const ROW_RSTD_WGSL = /* wgsl */ `
fn rowRstd(base: u32) -> f32 {
  var ss = 0.0;
  for (var i = 0u; i < p.H; i++) {
    let v = x[base + i];
    ss = fma(v, v, ss);
  }
  return 1.0 / sqrt(ss / f32(p.H) + p.eps);
}
`;

const FORWARD = defineKernel({
  name: "rmsnorm_forward",
  params: { T: "u32", H: "u32", eps: "f32" },
  bindings: { x: "read f32", w: "read f32", y: "read_write f32", rstd: "read_write f32" },
  loopBound: ({ H }) => 2 * (H + 1),
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
${ROW_RSTD_WGSL}@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = flatIndex(gid, nwg, ${WG}u);
  if (t >= p.T) { return; }
  let base = t * p.H;
  let r = rowRstd(base);
  rstd[t] = r;
  for (var i = 0u; i < p.H; i++) {
    y[base + i] = w[i] * (x[base + i] * r);
  }
}
`,
});

// The forward's first pass alone, for a norm folded into the next matmul's load
// (kernels/matmul_fused.ts): the same sum in the same order, so rstd has the forward's bits.
const RSTD = defineKernel({
  name: "rmsnorm_rstd",
  params: { T: "u32", H: "u32", eps: "f32" },
  bindings: { x: "read f32", rstd: "read_write f32" },
  loopBound: ({ H }) => H + 1,
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
${ROW_RSTD_WGSL}@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = flatIndex(gid, nwg, ${WG}u);
  if (t >= p.T) { return; }
  rstd[t] = rowRstd(t * p.H);
}
`,
});

const BACKWARD = defineKernel({
  name: "rmsnorm_backward",
  params: { T: "u32", H: "u32", accumulate: "u32" },
  bindings: {
    dx: "read_write f32",
    dy: "read f32",
    x: "read f32",
    w: "read f32",
    rstd: "read f32",
  },
  loopBound: ({ H }) => 2 * (H + 1),
  body: /* wgsl */ `
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
});

/** Rows of one block of the weight gradient's first pass. */
const ROWS = 4096;

// Block wid.y sums rows [wid.y·ROWS, min(T, (wid.y+1)·ROWS)) of column j into out[wid.y·H + j].
const WEIGHT_GRAD = defineKernel({
  name: "rmsnorm_weight_grad",
  params: { T: "u32", H: "u32", accumulate: "u32" },
  bindings: { out: "read_write f32", dy: "read f32", x: "read f32", rstd: "read f32" },
  loopBound: ({ T }) => Math.min(T, ROWS) + 1,
  body: /* wgsl */ `
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let j = wid.x * ${WG}u + lid.x;
  if (j >= p.H) { return; }
  let t0 = wid.y * ${ROWS}u;
  let t1 = min(p.T, t0 + ${ROWS}u);
  var s = 0.0;
  for (var t = t0; t < t1; t++) {
    s = fma(dy[t * p.H + j], x[t * p.H + j] * rstd[t], s);
  }
  let o = wid.y * p.H + j;
  if (p.accumulate != 0u) { out[o] = out[o] + s; } else { out[o] = s; }
}
`,
});

// dw[j] (+)= Σ_b blocks[b·H + j], b = 0..B-1 in order.
const SUM_BLOCKS = defineKernel({
  name: "rmsnorm_weight_grad_blocks",
  params: { B: "u32", H: "u32", accumulate: "u32" },
  bindings: { dw: "read_write f32", blocks: "read f32" },
  loopBound: ({ B }) => B + 1,
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let j = flatIndex(gid, nwg, ${WG}u);
  if (j >= p.H) { return; }
  var s = 0.0;
  for (var b = 0u; b < p.B; b++) { s += blocks[b * p.H + j]; }
  if (p.accumulate != 0u) { dw[j] = dw[j] + s; } else { dw[j] = s; }
}
`,
});

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
  rec.dispatch(FORWARD, {
    bindings: { x, w, y, rstd },
    params: { T, H, eps },
    grid: grid1d(T, WG),
  });
}

/**
 * Only `rstd[t] = 1/sqrt(mean(x[t,:]²) + eps)` (bit for bit `rmsnormForward`'s), for a norm whose
 * output the next matmul forms on load (`matmul` option `norm`). Shapes: x [T, H], rstd [T].
 */
export function rmsnormRstd(rec: Recorder, rstd: GpuTensor, x: GpuTensor, eps: number): void {
  const [T, H] = expect2d("rmsnorm x", x);
  expectShape("rmsnorm rstd", rstd, [T]);
  rec.dispatch(RSTD, { bindings: { x, rstd }, params: { T, H, eps }, grid: grid1d(T, WG) });
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
  rec.dispatch(BACKWARD, {
    bindings: { dx, dy, x, w, rstd },
    params: { T, H, accumulate: accumulate ? 1 : 0 },
    grid: grid1d(T, WG),
  });
}

/**
 * Weight gradient `dw[j] = Σ_t dy[t,j]·x[t,j]·rstd[t]`, summed over t in order within blocks of
 * 4096 rows and then over the blocks in order; with `accumulate`, `dw +=`. Shapes: dw [H],
 * dy, x [T, H], rstd [T].
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
  const blocks = Math.ceil(T / ROWS);
  const groups = Math.ceil(H / WG);
  if (blocks === 1) {
    rec.dispatch(WEIGHT_GRAD, {
      bindings: { out: dw, dy, x, rstd },
      params: { T, H, accumulate: accumulate ? 1 : 0 },
      grid: [groups, 1],
    });
    return;
  }
  const part = rec.scratch([blocks, H], "f32", "rmsnorm weight-grad blocks");
  rec.dispatch(WEIGHT_GRAD, {
    bindings: { out: part, dy, x, rstd },
    params: { T, H, accumulate: 0 },
    grid: [groups, blocks],
  });
  rec.dispatch(SUM_BLOCKS, {
    bindings: { dw, blocks: part },
    params: { B: blocks, H, accumulate: accumulate ? 1 : 0 },
    grid: grid1d(H, WG),
  });
}

/**
 * Deterministic reductions: sum, sum of squares over several tensors (global gradient norm)
 * and clipping by that norm, without a read-back.
 *
 * A reduction is one workgroup of 256 invocations: invocation i sums elements i, i+256, … in
 * order, then a fixed tree combines the 256 partial sums. The order never depends on timing, so
 * the same input gives the same bits.
 * @module
 */
import { GpuShapeError } from "../errors.ts";
import { defineKernel } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { expectShape, type GpuTensor } from "../tensor.ts";
import { FLAT_INDEX_WGSL, grid1d } from "./grid.ts";

const RWG = 256;

const REDUCE = defineKernel({
  name: "reduce_sum",
  params: { n: "u32", square: "u32", slot: "u32" },
  bindings: { outv: "read_write f32", x: "read f32" },
  // ⌈n/256⌉ + 1 passes over the elements, then 8 + 1 for the tree.
  loopBound: ({ n }) => Math.ceil(n / RWG) + 1 + 9,
  body: /* wgsl */ `
var<workgroup> part: array<f32, ${RWG}>;
@compute @workgroup_size(${RWG})
fn main(@builtin(local_invocation_index) tid: u32) {
  var s = 0.0;
  for (var i = tid; i < p.n; i += ${RWG}u) {
    let v = x[i];
    if (p.square != 0u) { s = fma(v, v, s); } else { s += v; }
  }
  part[tid] = s;
  workgroupBarrier();
  for (var stride = ${RWG / 2}u; stride > 0u; stride = stride / 2u) {
    if (tid < stride) { part[tid] = part[tid] + part[tid + stride]; }
    workgroupBarrier();
  }
  if (tid == 0u) { outv[p.slot] = part[0]; }
}
`,
});

/** `out[0] = Σ_i x[i]` (any shape of x; out is f32 [1]). */
export function sum(rec: Recorder, out: GpuTensor, x: GpuTensor): void {
  expectShape("sum out", out, [1]);
  if (x.dtype !== "f32") throw new GpuShapeError(`sum: ${x.describe()} is not f32`);
  rec.dispatch(REDUCE, {
    bindings: { outv: out, x },
    params: { n: x.size, square: 0, slot: 0 },
    grid: [1],
  });
}

/**
 * `partials[i] = Σ tensors[i]²` for each tensor, then `out[0] = Σ_i partials[i]` in order: the
 * squared global norm used for clipping. Shapes: out [1], partials [tensors.length].
 */
export function sumSquares(
  rec: Recorder,
  out: GpuTensor,
  partials: GpuTensor,
  tensors: readonly GpuTensor[],
): void {
  expectShape("sumSquares out", out, [1]);
  expectShape("sumSquares partials", partials, [tensors.length]);
  tensors.forEach((t, i) => {
    if (t.dtype !== "f32") throw new GpuShapeError(`sumSquares: ${t.describe()} is not f32`);
    rec.dispatch(REDUCE, {
      bindings: { outv: partials, x: t },
      params: { n: t.size, square: 1, slot: i },
      grid: [1],
    });
  });
  rec.dispatch(REDUCE, {
    bindings: { outv: out, x: partials },
    params: { n: tensors.length, square: 0, slot: 0 },
    grid: [1],
  });
}

const WG = 256;

const CLIP = defineKernel({
  name: "clip_by_norm",
  params: { n: "u32", maxNorm: "f32" },
  bindings: { x: "read_write f32", sumSq: "read f32" },
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatIndex(gid, nwg, ${WG}u);
  if (i >= p.n) { return; }
  let coef = min(1.0, p.maxNorm / (sqrt(sumSq[0]) + 1e-6));
  x[i] = x[i] * coef;
}
`,
});

/**
 * Scales every tensor by `min(1, maxNorm / (sqrt(sumSq[0]) + 1e-6))` (PyTorch's
 * `clip_grad_norm_`), reading the squared norm from the device (see `sumSquares`).
 */
export function clipByGlobalNorm(
  rec: Recorder,
  tensors: readonly GpuTensor[],
  sumSq: GpuTensor,
  maxNorm: number,
): void {
  expectShape("clipByGlobalNorm sumSq", sumSq, [1]);
  if (!(maxNorm > 0)) {
    throw new GpuShapeError(`clipByGlobalNorm: maxNorm must be > 0, got ${maxNorm}`);
  }
  for (const t of tensors) {
    if (t.dtype !== "f32") throw new GpuShapeError(`clipByGlobalNorm: ${t.describe()} is not f32`);
    rec.dispatch(CLIP, {
      bindings: { x: t, sumSq },
      params: { n: t.size, maxNorm },
      grid: grid1d(t.size, WG),
    });
  }
}

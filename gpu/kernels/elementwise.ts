/**
 * Elementwise kernels: residual add, in-place accumulate, scale, copy, fill.
 *
 * Every binding of `axpby` is read-write so that the output may alias an input (WebGPU allows a
 * buffer bound writable more than once in a dispatch, not writable and read-only); each element
 * is read and written by the same invocation, so aliasing is safe.
 * @module
 */
import type { Recorder } from "../recorder.ts";
import { expectSize, type GpuTensor } from "../tensor.ts";
import { defineKernel } from "../kernel.ts";
import { FLAT_INDEX_WGSL, grid1d } from "./grid.ts";

const WG = 256;

const AXPBY = defineKernel({
  name: "axpby",
  params: { n: "u32", alpha: "f32", beta: "f32", hasY: "u32" },
  bindings: { outv: "read_write f32", x: "read_write f32", y: "read_write f32?" },
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatIndex(gid, nwg, ${WG}u);
  if (i >= p.n) { return; }
  var v = p.alpha * x[i];
  if (p.hasY != 0u) { v = v + p.beta * y[i]; }
  outv[i] = v;
}
`,
});

const FILL = defineKernel({
  name: "fill",
  params: { n: "u32", value: "f32" },
  bindings: { outv: "read_write f32" },
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatIndex(gid, nwg, ${WG}u);
  if (i < p.n) { outv[i] = p.value; }
}
`,
});

/**
 * `out = alpha·x + beta·y` elementwise (`y` omitted: `out = alpha·x`). All three have the same
 * element count (shapes may differ); `out` may be `x` or `y`.
 */
export function axpby(
  rec: Recorder,
  out: GpuTensor,
  x: GpuTensor,
  y: GpuTensor | null,
  alpha: number,
  beta: number,
): void {
  expectSize("axpby x", x, out.size);
  expectSize("axpby out", out, out.size);
  if (y) expectSize("axpby y", y, out.size);
  rec.dispatch(AXPBY, {
    bindings: { outv: out, x, y },
    params: { n: out.size, alpha, beta, hasY: y ? 1 : 0 },
    grid: grid1d(out.size, WG),
  });
}

/** Residual add: `out = a + b` (out may be a or b). */
export function add(rec: Recorder, out: GpuTensor, a: GpuTensor, b: GpuTensor): void {
  axpby(rec, out, a, b, 1, 1);
}

/** In-place accumulate: `y += alpha·x` (gradient accumulation, residual streams). */
export function accumulate(rec: Recorder, y: GpuTensor, x: GpuTensor, alpha = 1): void {
  axpby(rec, y, x, y, alpha, 1);
}

/** `out = alpha·x` (out may be x, for in-place scaling). */
export function scale(rec: Recorder, out: GpuTensor, x: GpuTensor, alpha: number): void {
  axpby(rec, out, x, null, alpha, 0);
}

/** `dst = src` elementwise, inside the compute pass (same element count, f32). */
export function copy(rec: Recorder, dst: GpuTensor, src: GpuTensor): void {
  axpby(rec, dst, src, null, 1, 0);
}

/** Sets every element of the f32 tensor `out` to `value`. */
export function fill(rec: Recorder, out: GpuTensor, value: number): void {
  expectSize("fill out", out, out.size);
  rec.dispatch(FILL, {
    bindings: { outv: out },
    params: { n: out.size, value },
    grid: grid1d(out.size, WG),
  });
}

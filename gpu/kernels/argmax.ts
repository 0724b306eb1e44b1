/**
 * Row-wise argmax for greedy decoding: only the chosen token ids travel back to the host.
 *
 * One workgroup per row: invocation i scans the columns i, i + WG, … in order, keeping the first
 * maximum it sees, and the fixed workgroup tree combines the candidates, the larger value
 * winning and, between equal values, the smaller index. NaN never wins over a number; a row of
 * NaN only gives 0.
 * @module
 */
import { defineKernel } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { expect2d, expectShape, type GpuTensor } from "../tensor.ts";
import { grid1d, GROUP_INDEX_WGSL, workgroupTreeWgsl } from "./grid.ts";

/** Invocations per row. */
const WG = 256;

const ARGMAX = defineKernel({
  name: "argmax",
  params: { T: "u32", V: "u32" },
  bindings: { ids: "read_write i32", x: "read f32" },
  loopBound: ({ V }) => Math.ceil(V / WG) + 1,
  body: /* wgsl */ `
${GROUP_INDEX_WGSL}
var<workgroup> bestV: array<f32, ${WG}>;
var<workgroup> bestI: array<u32, ${WG}>;

// NaN by its bits: WGSL lets compilers assume that x != x is false.
fn isNan(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// Whether candidate (bv, bi) beats (av, ai): a number beats NaN, then the larger value, then
// (equal values, or both NaN) the smaller index.
fn beats(av: f32, ai: u32, bv: f32, bi: u32) -> bool {
  let an = isNan(av);
  let bn = isNan(bv);
  if (an != bn) { return an; }
  if (!an && bv != av) { return bv > av; }
  return bi < ai;
}

@compute @workgroup_size(${WG})
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  let t = groupIndex(wid, nwg);
  if (t >= p.T) { return; }
  let base = t * p.V;
  var bi = min(tid, p.V - 1u);
  var bv = x[base + bi];
  for (var v = tid + ${WG}u; v < p.V; v += ${WG}u) {
    let xv = x[base + v];
    if (beats(bv, bi, xv, v)) { bv = xv; bi = v; }
  }
  bestV[tid] = bv;
  bestI[tid] = bi;
  workgroupBarrier();
  ${
    workgroupTreeWgsl(WG, (s) =>
      `if (beats(bestV[tid], bestI[tid], bestV[tid + ${s}], bestI[tid + ${s}])) { ` +
      `bestV[tid] = bestV[tid + ${s}]; bestI[tid] = bestI[tid + ${s}]; }`)
  }
  if (tid == 0u) { ids[t] = i32(bestI[0]); }
}
`,
});

/**
 * `ids[t] = argmax_v x[t, v]` (first index of the maximum). Shapes: ids i32 [T], x [T, V].
 * @throws KernelLoopBoundError for V over 16.7M (⌈V/256⌉ + 1 > 65535).
 */
export function argmax(rec: Recorder, ids: GpuTensor, x: GpuTensor): void {
  const [T, V] = expect2d("argmax x", x);
  expectShape("argmax ids", ids, [T], "i32");
  rec.dispatch(ARGMAX, { bindings: { ids, x }, params: { T, V }, grid: grid1d(T, 1) });
}

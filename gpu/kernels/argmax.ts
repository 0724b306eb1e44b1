/**
 * Row-wise argmax for greedy decoding: only the chosen token ids travel back to the host.
 * @module
 */
import { defineKernel } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { expect2d, expectShape, type GpuTensor } from "../tensor.ts";
import { FLAT_INDEX_WGSL, grid1d } from "./grid.ts";

const WG = 64;

const ARGMAX = defineKernel({
  name: "argmax",
  params: { T: "u32", V: "u32" },
  bindings: { ids: "read_write i32", x: "read f32" },
  loopBound: ({ V }) => V,
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = flatIndex(gid, nwg, ${WG}u);
  if (t >= p.T) { return; }
  var best = 0u;
  var bv = x[t * p.V];
  for (var v = 1u; v < p.V; v++) {
    let xv = x[t * p.V + v];
    // Strictly greater keeps the first maximum; NaN never wins (unless it is first).
    if (xv > bv || bv != bv) { best = v; bv = xv; }
  }
  ids[t] = i32(best);
}
`,
});

/** `ids[t] = argmax_v x[t, v]` (first index of the maximum). Shapes: ids i32 [T], x [T, V]. */
export function argmax(rec: Recorder, ids: GpuTensor, x: GpuTensor): void {
  const [T, V] = expect2d("argmax x", x);
  expectShape("argmax ids", ids, [T], "i32");
  rec.dispatch(ARGMAX, { bindings: { ids, x }, params: { T, V }, grid: grid1d(T, WG) });
}

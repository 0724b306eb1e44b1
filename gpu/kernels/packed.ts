/**
 * Writing 16-bit (bf16/f16) tensors on the device: `W ← rnd(D + W)` (an update computed in f32,
 * added to a packed W with one rounding to nearest even per element) and `W ← rnd(D)` (an f32
 * tensor rounded into a packed one). One invocation owns one 32-bit word, i.e. both elements
 * that share it, so no two invocations write the same word; the padding half of an odd count's
 * last word stays zero. The rounding is integer arithmetic (gpu/kernel.ts `X_store2`), so every
 * device and the host's `packHalf` give the same bits, which the workers' checksums of W rely on.
 * @module
 */
import { GpuShapeError } from "../errors.ts";
import { defineKernelVariants } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { type GpuTensor, isHalf } from "../tensor.ts";
import type { HalfType } from "../half.ts";
import { FLAT_INDEX_WGSL, grid1d } from "./grid.ts";

const WG = 256;

const ACCUMULATE = defineKernelVariants((t: HalfType) => ({
  name: `accumulate_packed_${t}`,
  params: { n: "u32", add: "u32" },
  bindings: { W: `read_write ${t}`, D: "read f32" },
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let w = flatIndex(gid, nwg, ${WG}u);
  let i = 2u * w;
  if (i >= p.n) { return; }
  var lo = D[i];
  var hi = 0.0;
  let two = i + 1u < p.n;
  if (two) { hi = D[i + 1u]; }
  if (p.add != 0u) {
    lo = lo + W_at(i);
    if (two) { hi = hi + W_at(i + 1u); }
  }
  W_store2(w, lo, hi);
}
`,
} as const), (t) => t);

/**
 * `W = rnd(D + W)` (`add`) or `W = rnd(D)` elementwise, W a bf16/f16 tensor and D an f32 tensor
 * of the same element count, rounded to nearest even (see the module doc).
 */
export function accumulatePacked(rec: Recorder, W: GpuTensor, D: GpuTensor, add: boolean): void {
  if (!isHalf(W.dtype)) throw new GpuShapeError(`accumulatePacked: ${W.describe()} is not 16-bit`);
  if (D.dtype !== "f32" || D.size !== W.size) {
    throw new GpuShapeError(`accumulatePacked: ${D.describe()} does not match ${W.describe()}`);
  }
  rec.dispatch(ACCUMULATE.variant(W.dtype), {
    bindings: { W, D },
    params: { n: W.size, add: add ? 1 : 0 },
    grid: grid1d(Math.ceil(W.size / 2), WG),
  });
}

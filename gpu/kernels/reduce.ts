/**
 * Deterministic reductions: sum, sum of squares over several tensors (global gradient norm)
 * and clipping by that norm, without a read-back.
 *
 * A reduction runs in passes, every workgroup of a pass summing one chunk of its input into one
 * output element: invocation i sums the chunk's elements i, i+256, … in order, then a fixed tree
 * combines the 256 partial sums. A tensor of up to 65,536 elements is one pass of one workgroup
 * (256 elements per invocation). A larger one is first cut into chunks of 256·items elements,
 * items = max(16, ⌈n / (256·1024)⌉) (≤ 256), so that a pass keeps about a thousand workgroups
 * busy however large the tensor (10M elements: 1,002 workgroups of 39 elements per invocation,
 * where one chunk size of 65,536 gave 153); the chunk sums (in a scratch tensor of the
 * recorder) are reduced the same way until one value is left. The chunking depends only on the
 * element count, never on the device or on timing, and no pass uses atomics, so the same input
 * gives the same bits on every run and every worker.
 * @module
 */
import { GpuShapeError } from "../errors.ts";
import { defineKernel } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { expectShape, type GpuTensor } from "../tensor.ts";
import { FLAT_INDEX_WGSL, grid1d, GROUP_INDEX_WGSL, workgroupTreeWgsl } from "./grid.ts";

const RWG = 256;
/** Most elements one invocation of a pass sums. */
const MAX_ITEMS = 256;
/** Most elements one workgroup sums: up to this, a tensor is one pass of one workgroup. */
const ONE_GROUP = RWG * MAX_ITEMS;
/** Workgroups a first pass aims at (see the module doc). */
const GROUPS = 1024;

/** Elements per invocation of the first pass over `n` elements (see the module doc). */
function itemsPerInvocation(n: number): number {
  if (n <= ONE_GROUP) return MAX_ITEMS;
  return Math.min(MAX_ITEMS, Math.max(16, Math.ceil(n / (RWG * GROUPS))));
}

const REDUCE = defineKernel({
  name: "reduce_sum",
  params: { n: "u32", chunk: "u32", square: "u32", slot: "u32" },
  bindings: { outv: "read_write f32", x: "read f32" },
  loopBound: ({ chunk }) => Math.ceil(chunk / RWG) + 1,
  body: /* wgsl */ `
${GROUP_INDEX_WGSL}
var<workgroup> part: array<f32, ${RWG}>;
@compute @workgroup_size(${RWG})
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  let g = groupIndex(wid, nwg);
  let start = g * p.chunk;
  if (start >= p.n) { return; }
  let end = min(p.n, start + p.chunk);
  var s = 0.0;
  for (var i = start + tid; i < end; i += ${RWG}u) {
    let v = x[i];
    if (p.square != 0u) { s = fma(v, v, s); } else { s += v; }
  }
  part[tid] = s;
  workgroupBarrier();
  ${workgroupTreeWgsl(RWG, (st) => `part[tid] = part[tid] + part[tid + ${st}];`)}
  if (tid == 0u) { outv[p.slot + g] = part[0]; }
}
`,
});

/**
 * Records `outv[slot] = Σ x[i]` (of `x[i]²` with `square`) as one pass per level, the chunk sums
 * of each level in a scratch tensor of the recorder.
 */
function reduceInto(
  rec: Recorder,
  outv: GpuTensor,
  slot: number,
  x: GpuTensor,
  square: boolean,
): void {
  let src = x;
  let sq = square;
  while (src.size > ONE_GROUP) {
    const chunk = RWG * itemsPerInvocation(src.size);
    const chunks = Math.ceil(src.size / chunk);
    const part = rec.scratch([chunks], "f32", "reduce partials");
    rec.dispatch(REDUCE, {
      bindings: { outv: part, x: src },
      params: { n: src.size, chunk, square: sq ? 1 : 0, slot: 0 },
      grid: grid1d(chunks, 1),
    });
    src = part;
    sq = false;
  }
  rec.dispatch(REDUCE, {
    bindings: { outv, x: src },
    params: { n: src.size, chunk: ONE_GROUP, square: sq ? 1 : 0, slot },
    grid: [1],
  });
}

/** `out[0] = Σ_i x[i]` (any shape of x; out is f32 [1]). */
export function sum(rec: Recorder, out: GpuTensor, x: GpuTensor): void {
  expectShape("sum out", out, [1]);
  if (x.dtype !== "f32") throw new GpuShapeError(`sum: ${x.describe()} is not f32`);
  reduceInto(rec, out, 0, x, false);
}

/**
 * `partials[i] = Σ tensors[i]²` for each tensor, then `out[0] = Σ_i partials[i]`: the squared
 * global norm used for clipping. Shapes: out [1], partials [tensors.length].
 */
export function sumSquares(
  rec: Recorder,
  out: GpuTensor,
  partials: GpuTensor,
  tensors: readonly GpuTensor[],
): void {
  expectShape("sumSquares out", out, [1]);
  expectShape("sumSquares partials", partials, [tensors.length]);
  tensors.forEach((t) => {
    if (t.dtype !== "f32") throw new GpuShapeError(`sumSquares: ${t.describe()} is not f32`);
  });
  tensors.forEach((t, i) => reduceInto(rec, partials, i, t, true));
  reduceInto(rec, out, 0, partials, false);
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

/**
 * The bias of a linear layer: `y[t, n] += b[n]` and its gradient `db[n] (+)= Σ_t dy[t, n]`.
 *
 * The gradient sums each column over the rows in order, within blocks of ROWS rows (one
 * invocation per block and column), then over the blocks in order, so it is deterministic and
 * every invocation stays within the loop bound (`MAX_INVOCATION_LOOP`) for any number of rows;
 * up to ROWS rows it is a single pass straight into db.
 * @module
 */
import { GpuShapeError } from "../errors.ts";
import { defineKernel } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { expect2d, expectShape, type GpuTensor } from "../tensor.ts";
import { FLAT_INDEX_WGSL, grid1d } from "./grid.ts";

const WG = 256;
const COL_WG = 64;
/** Rows of one block of the gradient's first pass. */
const ROWS = 4096;

const BIAS_ADD = defineKernel({
  name: "bias_add",
  params: { n: "u32", N: "u32" },
  bindings: { y: "read_write f32", b: "read f32" },
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatIndex(gid, nwg, ${WG}u);
  if (i < p.n) { y[i] = y[i] + b[i % p.N]; }
}
`,
});

// Block wid.y sums rows [wid.y·ROWS, min(T, (wid.y+1)·ROWS)) of column n into out[wid.y·N + n].
const COLUMN_SUM = defineKernel({
  name: "bias_grad",
  params: { T: "u32", N: "u32", accumulate: "u32" },
  bindings: { out: "read_write f32", dy: "read f32" },
  loopBound: ({ T }) => Math.min(T, ROWS) + 1,
  body: /* wgsl */ `
@compute @workgroup_size(${COL_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let n = wid.x * ${COL_WG}u + lid.x;
  if (n >= p.N) { return; }
  let t0 = wid.y * ${ROWS}u;
  let t1 = min(p.T, t0 + ${ROWS}u);
  var s = 0.0;
  for (var t = t0; t < t1; t++) { s += dy[t * p.N + n]; }
  let o = wid.y * p.N + n;
  if (p.accumulate != 0u) { out[o] = out[o] + s; } else { out[o] = s; }
}
`,
});

// db[n] (+)= Σ_k blocks[k·N + n], k = 0..B-1 in order.
const SUM_BLOCKS = defineKernel({
  name: "bias_grad_blocks",
  params: { B: "u32", N: "u32", accumulate: "u32" },
  bindings: { db: "read_write f32", blocks: "read f32" },
  loopBound: ({ B }) => B + 1,
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${COL_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let n = flatIndex(gid, nwg, ${COL_WG}u);
  if (n >= p.N) { return; }
  var s = 0.0;
  for (var k = 0u; k < p.B; k++) { s += blocks[k * p.N + n]; }
  if (p.accumulate != 0u) { db[n] = db[n] + s; } else { db[n] = s; }
}
`,
});

/** `y[t, :] += b` for every row t of `y` [T, N]; `b` [N]. */
export function biasForward(rec: Recorder, y: GpuTensor, b: GpuTensor): void {
  const [T, N] = expect2d("bias y", y);
  expectShape("bias b", b, [N]);
  rec.dispatch(BIAS_ADD, {
    bindings: { y, b },
    params: { n: T * N, N },
    grid: grid1d(T * N, WG),
  });
}

/**
 * `db[n] = Σ_t dy[t, n]` (with `accumulate`, `db +=`), summed over t in order within blocks of
 * 4096 rows and then over the blocks in order. Shapes: db [N], dy [T, N].
 */
export function biasBackward(
  rec: Recorder,
  db: GpuTensor,
  dy: GpuTensor,
  accumulate = false,
): void {
  const [T, N] = expect2d("bias dy", dy);
  expectShape("bias db", db, [N]);
  const blocks = Math.ceil(T / ROWS);
  const groups = Math.ceil(N / COL_WG);
  if (groups > 65535 || blocks > 65535) {
    throw new GpuShapeError(`biasBackward: [${T}, ${N}] is too large a grid`);
  }
  const acc = accumulate ? 1 : 0;
  if (blocks === 1) {
    rec.dispatch(COLUMN_SUM, {
      bindings: { out: db, dy },
      params: { T, N, accumulate: acc },
      grid: [groups, 1],
    });
    return;
  }
  const part = rec.scratch([blocks, N], "f32", "bias grad blocks");
  rec.dispatch(COLUMN_SUM, {
    bindings: { out: part, dy },
    params: { T, N, accumulate: 0 },
    grid: [groups, blocks],
  });
  rec.dispatch(SUM_BLOCKS, {
    bindings: { db, blocks: part },
    params: { B: blocks, N, accumulate: acc },
    grid: grid1d(N, COL_WG),
  });
}

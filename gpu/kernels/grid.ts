/**
 * Grid helpers shared by the kernels: 1-D work larger than the per-dimension workgroup limit is
 * folded into two dimensions, and the WGSL prelude unfolds it; and the fixed-order workgroup
 * tree that the row reductions (cross-entropy, argmax, sums) share.
 * @module
 */

/** Largest number of workgroups per dimension that every WebGPU device accepts. */
export const MAX_GROUPS_PER_DIM = 65535;

/** Workgroups for `n` invocations of `size` per group, folded into [x, y]. */
export function grid1d(n: number, size: number): [number, number] {
  const groups = Math.ceil(n / size);
  if (groups <= MAX_GROUPS_PER_DIM) return [groups, 1];
  const y = Math.ceil(groups / MAX_GROUPS_PER_DIM);
  return [Math.ceil(groups / y), y];
}

/**
 * WGSL for the flat invocation index of a folded 1-D grid; declares `gid` and `nwg` builtins as
 * entry-point parameters in the kernel, then `let i = flatIndex(gid, nwg, SIZE);`.
 */
export const FLAT_INDEX_WGSL = /* wgsl */ `
fn flatIndex(gid: vec3<u32>, nwg: vec3<u32>, size: u32) -> u32 {
  return gid.x + gid.y * nwg.x * size;
}
`;

/** WGSL constant for a quiet NaN, written where an index is out of range. */
export const NAN_WGSL = /* wgsl */ `
fn nanF32() -> f32 {
  return bitcast<f32>(0x7fc00000u);
}
`;

/**
 * WGSL for the flat workgroup index of a folded grid of one workgroup per item (`grid1d(n, 1)`):
 * declare `wid` (workgroup_id) and `nwg` builtins, then `let g = groupIndex(wid, nwg);`. It is
 * uniform over the workgroup, so an early return on it may precede barriers.
 */
export const GROUP_INDEX_WGSL = /* wgsl */ `
fn groupIndex(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return wid.x + wid.y * nwg.x;
}
`;

/**
 * WGSL statements that reduce `size` values in workgroup memory to element 0 by a fixed tree:
 * for stride = size/2, …, 1 the invocations `tid < stride` run `step(stride)` (combining
 * element tid with element tid + stride), then the workgroup waits. The caller has stored
 * element `tid` and passed a barrier; afterwards every invocation may read element 0. The steps
 * are written out rather than looped, so they add nothing to the kernel's loop bound, and the
 * order never depends on timing: the same values give the same bits.
 */
export function workgroupTreeWgsl(size: number, step: (stride: string) => string): string {
  if (!Number.isInteger(Math.log2(size)) || size < 2) {
    throw new Error(`workgroupTreeWgsl: size ${size} is not a power of two >= 2`);
  }
  const lines: string[] = [];
  for (let s = size / 2; s >= 1; s /= 2) {
    lines.push(`if (tid < ${s}u) { ${step(`${s}u`)} }`, "workgroupBarrier();");
  }
  return lines.join("\n  ");
}

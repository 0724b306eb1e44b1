/**
 * Grid helpers shared by the kernels: 1-D work larger than the per-dimension workgroup limit is
 * folded into two dimensions, and the WGSL prelude unfolds it.
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

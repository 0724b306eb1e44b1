/**
 * Rotary position embedding in Hugging Face's rotate-half layout: within each head of size hd,
 * element d < hd/2 pairs with d + hd/2:
 *
 *   y[d]        = x[d]·cos(θ_d·pos) − x[d+hd/2]·sin(θ_d·pos)
 *   y[d+hd/2]   = x[d+hd/2]·cos(θ_d·pos) + x[d]·sin(θ_d·pos),   θ_d = theta^(−2d/hd)
 *
 * The backward pass is the inverse rotation (sin negated). cos/sin come from a table computed on
 * the host the way Hugging Face computes it (inverse frequencies and angles rounded to f32,
 * then cos/sin of the f32 angle), so positions match HF's within an ulp of cos/sin. Scaled RoPE
 * (linear, dynamic, llama3) passes its own inverse frequencies (`invFreq`).
 * @module
 */
import { GpuShapeError } from "../errors.ts";
import type { Gpu } from "../engine.ts";
import { defineKernel } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { expect2d, expectShape, type GpuTensor } from "../tensor.ts";
import { FLAT_INDEX_WGSL, grid1d, NAN_WGSL } from "./grid.ts";

export interface RopeConfig {
  headDim: number;
  theta: number;
  /** Positions 0..maxPositions-1 are in the table. */
  maxPositions: number;
  /**
   * The inverse frequencies [headDim/2] (rounded to f32), replacing theta^(−2d/hd): a scaled
   * RoPE's, computed on the host.
   */
  invFreq?: ArrayLike<number>;
}

/** cos/sin tables [maxPositions, headDim/2] on the device. */
export interface RopeTable extends RopeConfig {
  cos: GpuTensor;
  sin: GpuTensor;
}

function checkConfig(c: RopeConfig): void {
  if (!Number.isInteger(c.headDim) || c.headDim < 2 || c.headDim % 2 !== 0) {
    throw new GpuShapeError(`rope: headDim must be an even integer >= 2, got ${c.headDim}`);
  }
  if (!Number.isInteger(c.maxPositions) || c.maxPositions < 1) {
    throw new GpuShapeError(`rope: maxPositions must be an integer >= 1, got ${c.maxPositions}`);
  }
  if (!(c.theta > 0)) throw new GpuShapeError(`rope: theta must be > 0, got ${c.theta}`);
  if (c.invFreq !== undefined) {
    if (c.invFreq.length !== c.headDim / 2) {
      throw new GpuShapeError(
        `rope: invFreq has ${c.invFreq.length} values, headDim ${c.headDim} needs ${c.headDim / 2}`,
      );
    }
    for (let d = 0; d < c.invFreq.length; d++) {
      if (!Number.isFinite(c.invFreq[d])) {
        throw new GpuShapeError(`rope: invFreq[${d}] = ${c.invFreq[d]} is not finite`);
      }
    }
  }
}

/** The host-side table values, row p = position p, column d = frequency d. */
export function ropeTableValues(c: RopeConfig): { cos: Float32Array; sin: Float32Array } {
  checkConfig(c);
  const half = c.headDim / 2;
  const f = Math.fround;
  const invFreq = new Float64Array(half);
  for (let d = 0; d < half; d++) {
    invFreq[d] = c.invFreq ? f(c.invFreq[d]) : f(1 / f(Math.pow(c.theta, f((2 * d) / c.headDim))));
  }
  const cos = new Float32Array(c.maxPositions * half);
  const sin = new Float32Array(c.maxPositions * half);
  for (let p = 0; p < c.maxPositions; p++) {
    for (let d = 0; d < half; d++) {
      const angle = f(p * invFreq[d]);
      cos[p * half + d] = Math.cos(angle);
      sin[p * half + d] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/** Uploads the cos/sin tables for `config`. Release with `gpu.release(table.cos/sin)`. */
export function createRopeTable(gpu: Gpu, config: RopeConfig): RopeTable {
  const { cos, sin } = ropeTableValues(config);
  const half = config.headDim / 2;
  return {
    ...config,
    cos: gpu.upload(cos, [config.maxPositions, half], "rope cos"),
    sin: gpu.upload(sin, [config.maxPositions, half], "rope sin"),
  };
}

const WG = 256;

const ROTATE = defineKernel({
  name: "rope",
  params: { T: "u32", nHeads: "u32", half: "u32", P: "u32", sign: "f32" },
  bindings: { x: "read_write f32", pos: "read i32", cosT: "read f32", sinT: "read f32" },
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
${NAN_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatIndex(gid, nwg, ${WG}u);
  if (i >= p.T * p.nHeads * p.half) { return; }
  let d = i % p.half;
  let th = i / p.half;
  let t = th / p.nHeads;
  let base = th * 2u * p.half;
  let x1 = x[base + d];
  let x2 = x[base + d + p.half];
  let ps = pos[t];
  if (ps < 0 || u32(ps) >= p.P) {
    x[base + d] = nanF32();
    x[base + d + p.half] = nanF32();
    return;
  }
  let c = cosT[u32(ps) * p.half + d];
  let s = p.sign * sinT[u32(ps) * p.half + d];
  x[base + d] = x1 * c - x2 * s;
  x[base + d + p.half] = x2 * c + x1 * s;
}
`,
});

function rotate(
  rec: Recorder,
  what: string,
  x: GpuTensor,
  positions: GpuTensor,
  table: RopeTable,
  nHeads: number,
  sign: number,
): void {
  const [T, width] = expect2d(`${what} x`, x);
  if (!Number.isInteger(nHeads) || nHeads < 1 || width !== nHeads * table.headDim) {
    throw new GpuShapeError(
      `${what}: x has ${width} columns, expected nHeads ${nHeads} × headDim ${table.headDim}`,
    );
  }
  expectShape(`${what} positions`, positions, [T], "i32");
  const half = table.headDim / 2;
  rec.dispatch(ROTATE, {
    bindings: { x, pos: positions, cosT: table.cos, sinT: table.sin },
    params: { T, nHeads, half, P: table.maxPositions, sign },
    grid: grid1d(T * nHeads * half, WG),
  });
}

/**
 * Rotates `x` [T, nHeads·headDim] in place by the angles of `positions` (i32 [T]). Applied to
 * q (nHeads = num_attention_heads) and k (nHeads = num_key_value_heads). A position outside
 * the table turns its row into NaN (a kernel cannot throw).
 */
export function ropeForward(
  rec: Recorder,
  x: GpuTensor,
  positions: GpuTensor,
  table: RopeTable,
  nHeads: number,
): void {
  rotate(rec, "ropeForward", x, positions, table, nHeads, 1);
}

/** Turns the gradient w.r.t. the rotated `x` into the gradient w.r.t. the input, in place. */
export function ropeBackward(
  rec: Recorder,
  dx: GpuTensor,
  positions: GpuTensor,
  table: RopeTable,
  nHeads: number,
): void {
  rotate(rec, "ropeBackward", dx, positions, table, nHeads, -1);
}

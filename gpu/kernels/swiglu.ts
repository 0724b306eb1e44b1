/**
 * SwiGLU gating of the LLaMA MLP: `h = silu(g) ⊙ u` with `silu(g) = g·σ(g)`, and its backward
 * `dg = dh·u·σ(g)·(1 + g·(1 − σ(g)))`, `du = dh·silu(g)`.
 * @module
 */
import type { KernelSpec } from "../pipeline_cache.ts";
import type { Recorder } from "../recorder.ts";
import { expectSize, type GpuTensor } from "../tensor.ts";
import { FLAT_INDEX_WGSL, grid1d } from "./grid.ts";

const WG = 256;

const SIGMOID_WGSL = /* wgsl */ `
fn sigmoid(g: f32) -> f32 {
  return 1.0 / (1.0 + exp(-g));
}
`;

const FORWARD: KernelSpec = {
  name: "swiglu_forward",
  bindings: ["rw", "read", "read"],
  params: "u",
  code: /* wgsl */ `
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> h: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> u: array<f32>;
${FLAT_INDEX_WGSL}
${SIGMOID_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatIndex(gid, nwg, ${WG}u);
  if (i >= p.n) { return; }
  let gi = g[i];
  h[i] = (gi * sigmoid(gi)) * u[i];
}
`,
};

const BACKWARD: KernelSpec = {
  name: "swiglu_backward",
  bindings: ["rw", "rw", "read", "read", "read"],
  params: "u",
  code: /* wgsl */ `
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dg: array<f32>;
@group(0) @binding(2) var<storage, read_write> du: array<f32>;
@group(0) @binding(3) var<storage, read> dh: array<f32>;
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read> u: array<f32>;
${FLAT_INDEX_WGSL}
${SIGMOID_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatIndex(gid, nwg, ${WG}u);
  if (i >= p.n) { return; }
  let gi = g[i];
  let s = sigmoid(gi);
  let d = dh[i];
  dg[i] = d * u[i] * s * (1.0 + gi * (1.0 - s));
  du[i] = d * (gi * s);
}
`,
};

/** `h = silu(g) ⊙ u`; h, g, u have the same element count (e.g. [T, intermediate]). */
export function swigluForward(rec: Recorder, h: GpuTensor, g: GpuTensor, u: GpuTensor): void {
  expectSize("swiglu g", g, h.size);
  expectSize("swiglu u", u, h.size);
  expectSize("swiglu h", h, h.size);
  rec.dispatch(FORWARD, [h, g, u], [h.size], grid1d(h.size, WG));
}

/** Gradients of `swigluForward` w.r.t. g and u, from dh; all five have the same element count. */
export function swigluBackward(
  rec: Recorder,
  dg: GpuTensor,
  du: GpuTensor,
  dh: GpuTensor,
  g: GpuTensor,
  u: GpuTensor,
): void {
  for (const [w, t] of [["dg", dg], ["du", du], ["dh", dh], ["g", g], ["u", u]] as const) {
    expectSize(`swiglu ${w}`, t, dh.size);
  }
  rec.dispatch(BACKWARD, [dg, du, dh, g, u], [dh.size], grid1d(dh.size, WG));
}

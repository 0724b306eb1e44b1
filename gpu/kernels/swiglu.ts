/**
 * SwiGLU gating of the LLaMA MLP: `h = silu(g) ⊙ u` with `silu(g) = g·σ(g)`, and its backward
 * `dg = dh·u·σ(g)·(1 + g·(1 − σ(g)))`, `du = dh·silu(g)`.
 * @module
 */
import { defineKernel } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { expectSize, type GpuTensor } from "../tensor.ts";
import { FLAT_INDEX_WGSL, grid1d } from "./grid.ts";

const WG = 256;

const SIGMOID_WGSL = /* wgsl */ `
fn sigmoid(g: f32) -> f32 {
  return 1.0 / (1.0 + exp(-g));
}
`;

const FORWARD = defineKernel({
  name: "swiglu_forward",
  params: { n: "u32" },
  bindings: { h: "read_write f32", g: "read f32", u: "read f32" },
  body: /* wgsl */ `
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
});

const BACKWARD = defineKernel({
  name: "swiglu_backward",
  params: { n: "u32" },
  bindings: {
    dg: "read_write f32",
    du: "read_write f32",
    dh: "read f32",
    g: "read f32",
    u: "read f32",
  },
  body: /* wgsl */ `
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
});

/** `h = silu(g) ⊙ u`; h, g, u have the same element count (e.g. [T, intermediate]). */
export function swigluForward(rec: Recorder, h: GpuTensor, g: GpuTensor, u: GpuTensor): void {
  expectSize("swiglu g", g, h.size);
  expectSize("swiglu u", u, h.size);
  expectSize("swiglu h", h, h.size);
  rec.dispatch(FORWARD, { bindings: { h, g, u }, params: { n: h.size }, grid: grid1d(h.size, WG) });
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
  rec.dispatch(BACKWARD, {
    bindings: { dg, du, dh, g, u },
    params: { n: dh.size },
    grid: grid1d(dh.size, WG),
  });
}

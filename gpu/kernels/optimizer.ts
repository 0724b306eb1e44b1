/**
 * SGD and AdamW, each in two forms:
 *
 * - delta form: writes the signed step Δ into a separate tensor and leaves the parameter as it
 *   is (HD-PiSSA: A_k and B_k never change; the moments accumulate for those fixed factors and
 *   the steps ΔA_k, ΔB_k travel to the other workers);
 * - in-place form: `p += Δ` (LoRA, PiSSA, full fine-tuning).
 *
 * SGD: `Δ = −lr·g − lr·wd·p`. AdamW as PyTorch (β1 0.9, β2 0.999, ε 1e-8 by default, bias
 * correction, decoupled weight decay):
 *   m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
 *   Δ = −lr·wd·p − (lr/(1−β1^t))·m / (sqrt(v)/sqrt(1−β2^t) + ε)
 * The in-place form applies the decay first, `p ← p·(1 − lr·wd)`, then the Adam step, in
 * PyTorch's order. Bias corrections are computed on the host in float64.
 * @module
 */
import { GpuShapeError } from "../errors.ts";
import { defineKernel, type ParamArgs } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { expectSize, type GpuTensor } from "../tensor.ts";
import { FLAT_INDEX_WGSL, grid1d } from "./grid.ts";

const WG = 256;

const ADAM_PARAMS = {
  n: "u32",
  beta1: "f32",
  oneMinusBeta1: "f32",
  beta2: "f32",
  oneMinusBeta2: "f32",
  eps: "f32",
  lrWd: "f32",
  stepSize: "f32",
  bc2Sqrt: "f32",
} as const;

/** The AdamW body; `apply` writes the step (in place into param, or into dst). */
function adamBody(apply: string): string {
  return /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatIndex(gid, nwg, ${WG}u);
  if (i >= p.n) { return; }
  let g = grad[i];
  let mi = p.beta1 * m[i] + p.oneMinusBeta1 * g;
  let vi = p.beta2 * v[i] + p.oneMinusBeta2 * (g * g);
  m[i] = mi;
  v[i] = vi;
  let denom = sqrt(vi) / p.bc2Sqrt + p.eps;
  ${apply}
}
`;
}

const ADAM_DELTA = defineKernel({
  name: "adamw_delta",
  params: ADAM_PARAMS,
  bindings: {
    dst: "read_write f32",
    grad: "read f32",
    m: "read_write f32",
    v: "read_write f32",
    param: "read f32",
  },
  body: adamBody(`dst[i] = -p.lrWd * param[i] - p.stepSize * (mi / denom);`),
});

const ADAM_INPLACE = defineKernel({
  name: "adamw_inplace",
  params: ADAM_PARAMS,
  bindings: { param: "read_write f32", grad: "read f32", m: "read_write f32", v: "read_write f32" },
  body: adamBody(`param[i] = param[i] * (1.0 - p.lrWd) - p.stepSize * (mi / denom);`),
});

const SGD_PARAMS = { n: "u32", lr: "f32", lrWd: "f32" } as const;

/** The SGD body; `apply` writes the step (in place into param, or into dst). */
function sgdBody(apply: string): string {
  return /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatIndex(gid, nwg, ${WG}u);
  if (i >= p.n) { return; }
  ${apply}
}
`;
}

const SGD_DELTA = defineKernel({
  name: "sgd_delta",
  params: SGD_PARAMS,
  bindings: { dst: "read_write f32", grad: "read f32", param: "read f32" },
  body: sgdBody(`dst[i] = -p.lr * grad[i] - p.lrWd * param[i];`),
});

const SGD_INPLACE = defineKernel({
  name: "sgd_inplace",
  params: SGD_PARAMS,
  bindings: { param: "read_write f32", grad: "read f32" },
  body: sgdBody(`param[i] = param[i] + (-p.lr * grad[i] - p.lrWd * param[i]);`),
});

export interface AdamWHyper {
  lr: number;
  /** 1-based step number t of the bias correction. */
  step: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
}

export interface SgdHyper {
  lr: number;
  weightDecay?: number;
}

/** Optimizer state of one parameter tensor (all the same element count). */
export interface AdamWState {
  param: GpuTensor;
  grad: GpuTensor;
  /** First moment, zero-initialised before step 1. */
  m: GpuTensor;
  /** Second moment, zero-initialised before step 1. */
  v: GpuTensor;
}

function adamParams(n: number, h: AdamWHyper): ParamArgs<typeof ADAM_PARAMS> {
  const b1 = h.beta1 ?? 0.9;
  const b2 = h.beta2 ?? 0.999;
  const eps = h.eps ?? 1e-8;
  const wd = h.weightDecay ?? 0;
  if (!Number.isInteger(h.step) || h.step < 1) {
    throw new GpuShapeError(`adamw: step must be an integer >= 1, got ${h.step}`);
  }
  if (!(b1 >= 0 && b1 < 1 && b2 >= 0 && b2 < 1 && eps > 0 && Number.isFinite(h.lr) && wd >= 0)) {
    throw new GpuShapeError(`adamw: invalid hyperparameters ${JSON.stringify(h)}`);
  }
  const bc1 = 1 - Math.pow(b1, h.step);
  const bc2 = 1 - Math.pow(b2, h.step);
  return {
    n,
    beta1: b1,
    oneMinusBeta1: 1 - b1,
    beta2: b2,
    oneMinusBeta2: 1 - b2,
    eps,
    lrWd: h.lr * wd,
    stepSize: h.lr / bc1,
    bc2Sqrt: Math.sqrt(bc2),
  };
}

function checkState(
  what: string,
  s: AdamWState | { param: GpuTensor; grad: GpuTensor },
  extra: GpuTensor[],
): number {
  const n = s.param.size;
  for (const t of [s.grad, ...extra]) expectSize(what, t, n);
  expectSize(what, s.param, n);
  return n;
}

/** AdamW, in place: updates m, v and `param`. */
export function adamwUpdate(rec: Recorder, s: AdamWState, h: AdamWHyper): void {
  const n = checkState("adamwUpdate", s, [s.m, s.v]);
  rec.dispatch(ADAM_INPLACE, {
    bindings: { param: s.param, grad: s.grad, m: s.m, v: s.v },
    params: adamParams(n, h),
    grid: grid1d(n, WG),
  });
}

/** AdamW, delta form: updates m, v and writes the step into `delta`; `param` is only read. */
export function adamwDelta(rec: Recorder, s: AdamWState, delta: GpuTensor, h: AdamWHyper): void {
  const n = checkState("adamwDelta", s, [s.m, s.v, delta]);
  rec.dispatch(ADAM_DELTA, {
    bindings: { dst: delta, grad: s.grad, m: s.m, v: s.v, param: s.param },
    params: adamParams(n, h),
    grid: grid1d(n, WG),
  });
}

function sgdParams(n: number, h: SgdHyper): ParamArgs<typeof SGD_PARAMS> {
  const wd = h.weightDecay ?? 0;
  if (!Number.isFinite(h.lr) || !(wd >= 0)) {
    throw new GpuShapeError(`sgd: invalid hyperparameters ${JSON.stringify(h)}`);
  }
  return { n, lr: h.lr, lrWd: h.lr * wd };
}

/** SGD, in place: `param += −lr·grad − lr·wd·param`. */
export function sgdUpdate(rec: Recorder, param: GpuTensor, grad: GpuTensor, h: SgdHyper): void {
  const n = checkState("sgdUpdate", { param, grad }, []);
  rec.dispatch(SGD_INPLACE, {
    bindings: { param, grad },
    params: sgdParams(n, h),
    grid: grid1d(n, WG),
  });
}

/** SGD, delta form: `delta = −lr·grad − lr·wd·param`. */
export function sgdDelta(
  rec: Recorder,
  delta: GpuTensor,
  param: GpuTensor,
  grad: GpuTensor,
  h: SgdHyper,
): void {
  const n = checkState("sgdDelta", { param, grad }, [delta]);
  rec.dispatch(SGD_DELTA, {
    bindings: { dst: delta, grad, param },
    params: sgdParams(n, h),
    grid: grid1d(n, WG),
  });
}

/**
 * Softmax cross-entropy over logits [T, V] with int32 targets and an f32 weight per position.
 *
 * `losses[t] = weight[t]·(logsumexp(logits[t,:]) − logits[t, target[t]])` and
 * `dlogits[t,:] = weight[t]·(softmax(logits[t,:]) − onehot(target[t]))`. A weight of 0 marks a
 * position that is not a target (its loss and gradient are exactly 0, whatever its target);
 * the model passes `1/(targets in the micro-batch · micro-batches)` so that the summed loss is
 * the mean it wants. A target outside [0, V) at a non-zero weight gives a NaN loss.
 * @module
 */
import { GpuShapeError } from "../errors.ts";
import { defineKernel } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { expect2d, expectShape, type GpuTensor } from "../tensor.ts";
import { grid1d, GROUP_INDEX_WGSL, NAN_WGSL, workgroupTreeWgsl } from "./grid.ts";
import { sum } from "./reduce.ts";

/** Invocations per row. */
const WG = 256;

/**
 * One workgroup per row t. Invocation i visits the columns i, i + WG, … in order (three strided
 * passes: maximum, sum of exponentials, gradient); the per-invocation maxima and sums are
 * combined by the fixed workgroup tree. One invocation thus runs at most 3·(⌈V/WG⌉ + 1) loop
 * passes, whatever T.
 */
const KERNEL = defineKernel({
  name: "cross_entropy",
  params: { T: "u32", V: "u32", writeGrad: "u32" },
  bindings: {
    logits: "read_write f32",
    targets: "read i32",
    weights: "read f32",
    losses: "read_write f32",
    dlogits: "read_write f32?",
  },
  loopBound: ({ V }) => 3 * (Math.ceil(V / WG) + 1),
  body: /* wgsl */ `
${GROUP_INDEX_WGSL}
${NAN_WGSL}
var<workgroup> wmax: array<f32, ${WG}>;
var<workgroup> wsum: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  let t = groupIndex(wid, nwg);
  if (t >= p.T) { return; }
  let base = t * p.V;
  let w = weights[t];
  let tgt = targets[t];
  let valid = tgt >= 0 && u32(tgt) < p.V;
  // dlogits may be logits itself: the target's logit is read before the barriers below, and
  // afterwards each invocation overwrites only the elements it has just read itself.
  var xt = 0.0;
  if (valid) { xt = logits[base + u32(tgt)]; }
  var m = logits[base + min(tid, p.V - 1u)];
  for (var v = tid + ${WG}u; v < p.V; v += ${WG}u) { m = max(m, logits[base + v]); }
  wmax[tid] = m;
  workgroupBarrier();
  ${workgroupTreeWgsl(WG, (s) => `wmax[tid] = max(wmax[tid], wmax[tid + ${s}]);`)}
  let mx = wmax[0];
  var s = 0.0;
  for (var v = tid; v < p.V; v += ${WG}u) { s += exp(logits[base + v] - mx); }
  wsum[tid] = s;
  workgroupBarrier();
  ${workgroupTreeWgsl(WG, (s) => `wsum[tid] = wsum[tid] + wsum[tid + ${s}];`)}
  let lse = mx + log(wsum[0]);
  if (tid == 0u) {
    var loss = 0.0;
    if (w != 0.0) {
      if (valid) { loss = w * (lse - xt); } else { loss = nanF32(); }
    }
    losses[t] = loss;
  }
  if (p.writeGrad == 0u) { return; }
  for (var v = tid; v < p.V; v += ${WG}u) {
    var g = 0.0;
    if (w != 0.0) {
      let pr = exp(logits[base + v] - lse);
      if (valid && v == u32(tgt)) { g = w * (pr - 1.0); } else { g = w * pr; }
    }
    dlogits[base + v] = g;
  }
}
`,
});

export interface CrossEntropyTensors {
  /** f32 [T, V]. */
  logits: GpuTensor;
  /** i32 [T]. */
  targets: GpuTensor;
  /** f32 [T]; 0 = not a target. */
  weights: GpuTensor;
  /** f32 [T], per-position weighted loss (written). */
  losses: GpuTensor;
  /**
   * f32 [1], Σ_t losses[t] in a fixed order over as many workgroups as T needs (`sum`,
   * kernels/reduce.ts), written; omit to skip the sum.
   */
  loss?: GpuTensor;
  /** f32 [T, V] gradient (written); may be `logits` itself to save memory; omit for loss only. */
  dlogits?: GpuTensor;
}

/**
 * Records the loss (and, with `dlogits`, its gradient) of a batch of positions.
 * @throws KernelLoopBoundError for a vocabulary over 5.59M (3·(⌈V/256⌉ + 1) > 65535).
 */
export function crossEntropy(rec: Recorder, t: CrossEntropyTensors): void {
  const [T, V] = expect2d("crossEntropy logits", t.logits);
  expectShape("crossEntropy targets", t.targets, [T], "i32");
  expectShape("crossEntropy weights", t.weights, [T]);
  expectShape("crossEntropy losses", t.losses, [T]);
  if (t.dlogits) expectShape("crossEntropy dlogits", t.dlogits, [T, V]);
  if (t.losses.allocation === t.logits.allocation) {
    throw new GpuShapeError("crossEntropy: losses share a buffer with logits");
  }
  const { logits, targets, weights, losses, dlogits } = t;
  rec.dispatch(KERNEL, {
    bindings: { logits, targets, weights, losses, dlogits },
    params: { T, V, writeGrad: dlogits ? 1 : 0 },
    grid: grid1d(T, 1),
  });
  if (t.loss) sum(rec, t.loss, t.losses);
}

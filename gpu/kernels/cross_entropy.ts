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
import { FLAT_INDEX_WGSL, grid1d, NAN_WGSL } from "./grid.ts";
import { sum } from "./reduce.ts";

const WG = 64;

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
  // Three passes over the row: V, V + 1 and V + 1 loop passes.
  loopBound: ({ V }) => 3 * V + 2,
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
${NAN_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = flatIndex(gid, nwg, ${WG}u);
  if (t >= p.T) { return; }
  let base = t * p.V;
  var m = logits[base];
  for (var v = 1u; v < p.V; v++) { m = max(m, logits[base + v]); }
  var s = 0.0;
  for (var v = 0u; v < p.V; v++) { s += exp(logits[base + v] - m); }
  let lse = m + log(s);
  let w = weights[t];
  let tgt = targets[t];
  let valid = tgt >= 0 && u32(tgt) < p.V;
  var loss = 0.0;
  if (w != 0.0) {
    if (valid) { loss = w * (lse - logits[base + u32(tgt)]); } else { loss = nanF32(); }
  }
  losses[t] = loss;
  if (p.writeGrad == 0u) { return; }
  // dlogits may be logits itself: each element is read before it is overwritten.
  for (var v = 0u; v < p.V; v++) {
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
  /** f32 [1], Σ_t losses[t] in order (written); omit to skip the sum. */
  loss?: GpuTensor;
  /** f32 [T, V] gradient (written); may be `logits` itself to save memory; omit for loss only. */
  dlogits?: GpuTensor;
}

/**
 * Records the loss (and, with `dlogits`, its gradient) of a batch of positions.
 * @throws KernelLoopBoundError for a vocabulary over 21,844 (3V + 2 > 65535 loop passes).
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
    grid: grid1d(T, WG),
  });
  if (t.loss) sum(rec, t.loss, t.losses);
}

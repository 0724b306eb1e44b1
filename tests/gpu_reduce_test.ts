// Reductions across many workgroups (sum, the clip norm's sum of squares, the cross-entropy loss
// sum) against float64 at 100k+ and 10M+ elements, their fixed order (the same bits on every
// run), and the chunk boundaries.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { clipByGlobalNorm, sum, sumSquares } from "../gpu/kernels/reduce.ts";
import { crossEntropy } from "../gpu/kernels/cross_entropy.ts";
import { sameBits } from "../gpu/check.ts";
import { Rng } from "../core/rng.ts";

/** Σ x and Σ |x| in float64 (the error bound of an f32 sum scales with Σ |x|). */
function ref(x: Float32Array, square = false): { s: number; abs: number } {
  let s = 0, abs = 0;
  for (const v of x) {
    const t = square ? v * v : v;
    s += t;
    abs += Math.abs(t);
  }
  return { s, abs };
}

Deno.test("sum: chunk boundaries and 100k, 1M, 10M+ elements against float64, same bits twice", async () => {
  const gpu = await Gpu.open();
  const rng = new Rng(401);
  try {
    for (const n of [1, 255, 65536, 65537, 100_003, 1_000_000, 10_000_019]) {
      // A mean of 0.3 keeps the sum away from 0, so the relative error says something.
      const x = rng.normals(n).map((v) => v + 0.3);
      const X = gpu.upload(x), out1 = gpu.tensor([1]), out2 = gpu.tensor([1]);
      const [a, b] = await gpu.run((rec) => {
        sum(rec, out1, X);
        sum(rec, out2, X);
      }, [out1, out2]);
      const r = ref(x);
      const err = Math.abs(a[0] - r.s) / r.abs;
      console.log(`sum n=${n}: ${a[0]} vs ${r.s.toFixed(4)}, error/Σ|x| ${err.toExponential(2)}`);
      assert.ok(err < 1e-6, `n=${n}: ${a[0]} vs ${r.s} (error/Σ|x| ${err})`);
      assert.ok(Math.abs(a[0] - r.s) / Math.abs(r.s) < 1e-4, `n=${n}: relative`);
      assert.ok(sameBits(a, b), `n=${n}: two runs differ`);
      for (const t of [X, out1, out2]) gpu.release(t);
    }
  } finally {
    gpu.close();
  }
});

Deno.test("clip norm: sum of squares over 100k, 10M+ and small tensors against float64, then clipping", async () => {
  const gpu = await Gpu.open();
  const rng = new Rng(402);
  try {
    const sizes = [100_001, 10_485_761, 3, 65_536];
    const xs = sizes.map((n) => rng.normals(n, 0.01));
    const T = xs.map((x) => gpu.upload(x));
    const out = gpu.tensor([1]), partials = gpu.tensor([sizes.length]);
    const [sq, parts] = await gpu.run(
      (rec) => sumSquares(rec, out, partials, T),
      [out, partials],
    );
    let total = 0;
    xs.forEach((x, i) => {
      const r = ref(x, true);
      total += r.s;
      const err = Math.abs(parts[i] - r.s) / r.s;
      assert.ok(err < 1e-5, `tensor ${i} (${sizes[i]}): ${parts[i]} vs ${r.s}`);
    });
    const err = Math.abs(sq[0] - total) / total;
    console.log(`sum of squares ${sq[0]} vs ${total}, rel ${err.toExponential(2)}`);
    assert.ok(err < 1e-5, `total ${sq[0]} vs ${total}`);

    // Clip to half the norm: every element scaled by maxNorm / (norm + 1e-6).
    const norm = Math.sqrt(sq[0]);
    const maxNorm = norm / 2;
    const [clipped] = await gpu.run(
      (rec) => clipByGlobalNorm(rec, T, out, maxNorm),
      [T[1]],
    );
    const coef = Math.fround(maxNorm / (norm + 1e-6));
    let worst = 0;
    for (let i = 0; i < clipped.length; i += 997) {
      worst = Math.max(
        worst,
        Math.abs(clipped[i] - xs[1][i] * coef) / (Math.abs(xs[1][i]) + 1e-30),
      );
    }
    assert.ok(worst < 1e-5, `clipping: worst relative ${worst}`);
    for (const t of [...T, out, partials]) gpu.release(t);
  } finally {
    gpu.close();
  }
});

Deno.test("cross-entropy loss sum over 100k positions against float64", async () => {
  const gpu = await Gpu.open();
  const rng = new Rng(403);
  try {
    const T = 100_003, V = 5;
    const logits = rng.normals(T * V, 2);
    const targets = Int32Array.from({ length: T }, () => rng.int(V));
    const weights = new Float32Array(T).fill(1 / T);
    const L = gpu.upload(logits, [T, V]), tg = gpu.upload(targets), w = gpu.upload(weights);
    const losses = gpu.tensor([T]), loss = gpu.tensor([1]);
    const [got] = await gpu.run(
      (rec) => crossEntropy(rec, { logits: L, targets: tg, weights: w, losses, loss }),
      [loss],
    );
    let expected = 0;
    for (let t = 0; t < T; t++) {
      let mx = -Infinity;
      for (let v = 0; v < V; v++) mx = Math.max(mx, logits[t * V + v]);
      let se = 0;
      for (let v = 0; v < V; v++) se += Math.exp(logits[t * V + v] - mx);
      expected += weights[t] * (mx + Math.log(se) - logits[t * V + targets[t]]);
    }
    const err = Math.abs(got[0] - expected) / expected;
    console.log(`loss ${got[0]} vs ${expected}, rel ${err.toExponential(2)}`);
    assert.ok(err < 1e-5, `loss ${got[0]} vs ${expected}`);
    for (const t of [L, tg, w, losses, loss]) gpu.release(t);
  } finally {
    gpu.close();
  }
});

// Weighted softmax cross-entropy (loss and dlogits), deterministic sums and argmax against
// float64; dlogits also against finite differences of the GPU loss itself.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError } from "../gpu/errors.ts";
import { argmax } from "../gpu/kernels/argmax.ts";
import { crossEntropy } from "../gpu/kernels/cross_entropy.ts";
import { sum, sumSquares } from "../gpu/kernels/reduce.ts";
import { crossEntropyRef } from "../gpu/reference.ts";
import { dot, finiteDiffError, relError, sameBits } from "../gpu/check.ts";
import { Rng } from "../core/rng.ts";

function batch(rng: Rng, T: number, V: number) {
  const logits = rng.normals(T * V, 3);
  const targets = Int32Array.from({ length: T }, () => rng.int(V));
  const mask = Array.from({ length: T }, () => rng.float() < 0.7);
  const n = Math.max(1, mask.filter(Boolean).length);
  // Non-targets carry weight 0 and an out-of-range target, which must not matter.
  const weights = Float32Array.from(mask, (m) => (m ? 1 / n : 0));
  mask.forEach((m, i) => {
    if (!m) targets[i] = -1;
  });
  return { logits, targets, weights };
}

Deno.test("gpu cross-entropy", async (t) => {
  const gpu = await Gpu.open();
  const rng = new Rng(707);
  try {
    await t.step("loss, per-position losses and dlogits against float64", async () => {
      for (const [T, V] of [[1, 2], [13, 259], [70, 31]]) {
        const { logits, targets, weights } = batch(rng, T, V);
        if (T === 1) weights[0] = 0.5, targets[0] = 1;
        const LG = gpu.upload(logits, [T, V]), TG = gpu.upload(targets), W = gpu.upload(weights);
        const LS = gpu.tensor([T]), L = gpu.tensor([1]), D = gpu.tensor([T, V]);
        const LI = gpu.upload(logits, [T, V]), LSI = gpu.tensor([T]);
        const [ls, l, d, di] = await gpu.run((rec) => {
          crossEntropy(rec, {
            logits: LG,
            targets: TG,
            weights: W,
            losses: LS,
            loss: L,
            dlogits: D,
          });
          // In place: the gradient overwrites the logits.
          crossEntropy(rec, { logits: LI, targets: TG, weights: W, losses: LSI, dlogits: LI });
        }, [LS, L, D, LI]);
        const ref = crossEntropyRef(logits, targets, weights, T, V);
        const errs = [
          relError(ls, ref.losses),
          Math.abs(l[0] - ref.loss) / Math.abs(ref.loss),
          relError(d, ref.dlogits),
        ];
        console.log(`cross-entropy ${T}x${V} rel ${errs.map((e) => e.toExponential(2)).join(" ")}`);
        for (const e of errs) assert.ok(e < 1e-5, `${errs}`);
        assert.ok(sameBits(d, di), "in-place gradient equals the out-of-place one");
        for (const x of [LG, TG, W, LS, L, D, LI, LSI]) gpu.release(x);
      }
    });

    await t.step("dlogits match finite differences of the GPU loss", async () => {
      const T = 4, V = 6;
      const { logits, targets, weights } = batch(rng, T, V);
      weights.fill(0.25);
      targets.forEach((_, i) => targets[i] = rng.int(V));
      const LG = gpu.upload(logits, [T, V]), TG = gpu.upload(targets), W = gpu.upload(weights);
      const LS = gpu.tensor([T]), L = gpu.tensor([1]), D = gpu.tensor([T, V]);
      const [d] = await gpu.run(
        (rec) =>
          crossEntropy(rec, {
            logits: LG,
            targets: TG,
            weights: W,
            losses: LS,
            loss: L,
            dlogits: D,
          }),
        [D],
      );
      const h = 1e-2;
      let worst = 0;
      for (const i of [0, 5, 9, 17, 23]) {
        const at = async (delta: number) => {
          const x = Float32Array.from(logits);
          x[i] += delta;
          gpu.write(LG, x);
          const [l] = await gpu.run(
            (rec) =>
              crossEntropy(rec, { logits: LG, targets: TG, weights: W, losses: LS, loss: L }),
            [L],
          );
          return l[0];
        };
        const fd = ((await at(h)) - (await at(-h))) / (2 * h);
        worst = Math.max(worst, Math.abs(fd - d[i]) / Math.max(Math.abs(d[i]), 1e-2));
      }
      console.log(`cross-entropy GPU finite differences ${worst.toExponential(2)}`);
      assert.ok(worst < 1e-2, `fd ${worst}`);
      // And the float64 reference against its own finite differences.
      const ref = crossEntropyRef(logits, targets, weights, T, V);
      const e = finiteDiffError(
        (x) => crossEntropyRef(x, targets, weights, T, V).loss,
        Float64Array.from(logits),
        ref.dlogits,
        [0, 5, 9, 17, 23],
      );
      assert.ok(e < 1e-7, `${e}`);
      for (const x of [LG, TG, W, LS, L, D]) gpu.release(x);
    });

    await t.step(
      "sum and argmax; invalid targets with weight give NaN; shapes checked",
      async () => {
        const n = 1000;
        const x = rng.normals(n);
        const X = gpu.upload(x), S1 = gpu.tensor([1]), S2 = gpu.tensor([1]);
        const [s1, s2] = await gpu.run((rec) => {
          sum(rec, S1, X);
          sum(rec, S2, X);
        }, [S1, S2]);
        assert.ok(Math.abs(s1[0] - dot(x, new Float64Array(n).fill(1))) < 1e-4);
        assert.ok(sameBits(s1, s2));

        const T = 5, V = 9;
        const lg = rng.normals(T * V);
        lg[2 * V + 4] = lg[2 * V + 6] = 100; // a tie keeps the first index
        const LG = gpu.upload(lg, [T, V]), IDS = gpu.tensor([T], "i32");
        const [ids] = await gpu.run((rec) => argmax(rec, IDS, LG), [IDS]);
        for (let r = 0; r < T; r++) {
          const row = Array.from(lg.slice(r * V, (r + 1) * V));
          assert.equal(ids[r], row.indexOf(Math.max(...row)));
        }

        const TG = gpu.upload(new Int32Array([0, V, 1, 2, 3])),
          W = gpu.upload(new Float32Array([1, 1, 0, 0, 0]));
        const LS = gpu.tensor([T]);
        const [ls] = await gpu.run(
          (rec) => crossEntropy(rec, { logits: LG, targets: TG, weights: W, losses: LS }),
          [LS],
        );
        assert.ok(Number.isFinite(ls[0]) && Number.isNaN(ls[1]) && ls[2] === 0);

        const rec = gpu.record();
        try {
          assert.throws(
            () => crossEntropy(rec, { logits: LG, targets: W, weights: W, losses: LS }),
            GpuShapeError,
          );
          assert.throws(
            () =>
              crossEntropy(rec, { logits: LG, targets: TG, weights: W, losses: gpu.tensor([4]) }),
            GpuShapeError,
          );
          assert.throws(() => sum(rec, gpu.tensor([2]), X), GpuShapeError);
        } finally {
          rec.discard();
        }
      },
    );
  } finally {
    gpu.close();
  }
});

// One invocation may run at most 65,535 loop passes (gpu/kernel.ts MAX_INVOCATION_LOOP); these
// sizes are far past what one invocation per row or one workgroup per tensor could cover.
Deno.test("gpu cross-entropy, argmax and sums at real sizes", async (t) => {
  const gpu = await Gpu.open();
  const rng = new Rng(4242);
  try {
    await t.step("cross-entropy at V = 32000, 32001, 128256, 151936 against float64", async () => {
      for (const [T, V] of [[8, 32000], [5, 32001], [4, 128256], [4, 151936]]) {
        const logits = rng.normals(T * V, 3);
        const targets = Int32Array.from({ length: T }, () => rng.int(V));
        const weights = new Float32Array(T).fill(1 / (T - 1));
        weights[1] = 0;
        targets[1] = -1;
        const LG = gpu.upload(logits, [T, V]), TG = gpu.upload(targets), W = gpu.upload(weights);
        const LS = gpu.tensor([T]), L = gpu.tensor([1]), D = gpu.tensor([T, V]);
        const LI = gpu.upload(logits, [T, V]), LSI = gpu.tensor([T]);
        const [ls, l, d, di] = await gpu.run((rec) => {
          crossEntropy(rec, {
            logits: LG,
            targets: TG,
            weights: W,
            losses: LS,
            loss: L,
            dlogits: D,
          });
          crossEntropy(rec, { logits: LI, targets: TG, weights: W, losses: LSI, dlogits: LI });
        }, [LS, L, D, LI]);
        const ref = crossEntropyRef(logits, targets, weights, T, V);
        const errs = [
          relError(ls, ref.losses),
          Math.abs(l[0] - ref.loss) / Math.abs(ref.loss),
          relError(d, ref.dlogits),
        ];
        console.log(
          `cross-entropy ${T}x${V} rel loss ${errs[0].toExponential(2)} ` +
            `sum ${errs[1].toExponential(2)} dlogits ${errs[2].toExponential(2)}`,
        );
        for (const e of errs) assert.ok(e < 1e-5, `${T}x${V}: ${errs}`);
        assert.ok(sameBits(d, di), "in-place gradient equals the out-of-place one");
        for (const x of [LG, TG, W, LS, L, D, LI, LSI]) gpu.release(x);
      }
    });

    await t.step("argmax at V = 151936: ties across invocations, NaN", async () => {
      const T = 6, V = 151936;
      const x = rng.normals(T * V);
      const at = (r: number, v: number, value: number) => x[r * V + v] = value;
      at(1, 200, 50), at(1, 259, 50); // equal maxima: 200 (invocation 200) before 259 (3)
      at(2, 5, 50), at(2, 150000, 50);
      at(3, 0, NaN), at(3, 7, NaN), at(3, 151935, 50); // NaN never wins; the last column does
      x.fill(1.5, 4 * V, 5 * V); // a constant row gives 0
      const expected = Array.from({ length: T }, (_, r) => {
        let b = 0;
        for (let v = 0; v < V; v++) {
          const xv = x[r * V + v], bv = x[r * V + b];
          if (!Number.isNaN(xv) && (Number.isNaN(bv) || xv > bv)) b = v;
        }
        return b;
      });
      assert.deepEqual(expected.slice(1, 5), [200, 5, 151935, 0]);
      const X = gpu.upload(x, [T, V]), IDS = gpu.tensor([T], "i32");
      const [ids] = await gpu.run((rec) => argmax(rec, IDS, X), [IDS]);
      assert.deepEqual(Array.from(ids), expected);
      gpu.release(X), gpu.release(IDS);
    });

    await t.step("65,539 rows: the grid folds past 65,535 workgroups", async () => {
      const T = 65539, V = 3;
      const logits = rng.normals(T * V, 2);
      const targets = Int32Array.from({ length: T }, () => rng.int(V));
      const weights = new Float32Array(T).fill(1 / T);
      const LG = gpu.upload(logits, [T, V]), TG = gpu.upload(targets), W = gpu.upload(weights);
      const LS = gpu.tensor([T]), D = gpu.tensor([T, V]), IDS = gpu.tensor([T], "i32");
      const [ls, d, ids] = await gpu.run((rec) => {
        crossEntropy(rec, { logits: LG, targets: TG, weights: W, losses: LS, dlogits: D });
        argmax(rec, IDS, LG);
      }, [LS, D, IDS]);
      const ref = crossEntropyRef(logits, targets, weights, T, V);
      assert.ok(relError(ls, ref.losses) < 1e-5 && relError(d, ref.dlogits) < 1e-5);
      for (const r of [0, 65534, 65535, T - 1]) {
        const row = Array.from(logits.subarray(r * V, (r + 1) * V));
        assert.equal(ids[r], row.indexOf(Math.max(...row)), `row ${r}`);
      }
      assert.ok(ls[T - 1] > 0 && ls[65535] > 0);
      for (const q of [LG, TG, W, LS, D, IDS]) gpu.release(q);
    });

    await t.step("sum and sumSquares over 150,001 and 20,000,003 elements", async () => {
      const sizes = [150_001, 20_000_003, 7];
      const xs = sizes.map((n) => {
        const x = rng.normals(n);
        for (let i = 0; i < n; i++) x[i] += 0.25;
        return x;
      });
      const XS = xs.map((x) => gpu.upload(x));
      const S = XS.map(() => gpu.tensor([1])), SQ = gpu.tensor([1]), P = gpu.tensor([3]);
      const inUse = gpu.stats().inUse;
      const run = () =>
        gpu.run((rec) => {
          XS.forEach((X, i) => sum(rec, S[i], X));
          sumSquares(rec, SQ, P, XS);
        }, [...S, SQ, P]);
      const a = await run();
      assert.equal(gpu.stats().inUse, inUse, "the partial sums went back to the pool");
      let sq = 0;
      xs.forEach((x, i) => {
        let s = 0, abs = 0, q = 0;
        for (const v of x) s += v, abs += Math.abs(v), q += v * v;
        sq += q;
        const es = Math.abs(a[i][0] - s) / abs, eq = Math.abs(a[4][i] - q) / q;
        console.log(
          `sum over ${x.length}: ${es.toExponential(2)} of Σ|x|, squares ${eq.toExponential(2)}`,
        );
        assert.ok(es < 1e-6 && eq < 1e-6, `${x.length}: ${es} ${eq}`);
      });
      assert.ok(Math.abs(a[3][0] - sq) / sq < 1e-6);
      const b = await run();
      a.forEach((v, i) => assert.ok(sameBits(v, b[i]), `run ${i} repeats its bits`));
      for (const q of [...XS, ...S, SQ, P]) gpu.release(q);
    });
  } finally {
    gpu.close();
  }
});

// AdamW and SGD (delta and in-place forms), global-norm reduction and clipping against float64.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError } from "../gpu/errors.ts";
import { adamwDelta, adamwUpdate, sgdDelta, sgdUpdate } from "../gpu/kernels/optimizer.ts";
import { clipByGlobalNorm, sumSquares } from "../gpu/kernels/reduce.ts";
import { adamwRef, sgdRef } from "../gpu/reference.ts";
import { relError, sameBits } from "../gpu/check.ts";
import { Rng } from "../core/rng.ts";

Deno.test("gpu optimizers", async (t) => {
  const gpu = await Gpu.open();
  const rng = new Rng(808);
  try {
    await t.step("AdamW delta form: moments accumulate, the parameter never changes", async () => {
      const n = 333;
      const p = rng.normals(n);
      const hyper = { lr: 1e-2, weightDecay: 0.1 };
      const P = gpu.upload(p),
        G = gpu.tensor([n]),
        M = gpu.zeros([n]),
        V = gpu.zeros([n]),
        D = gpu.tensor([n]);
      let m: ArrayLike<number> = new Float64Array(n), v: ArrayLike<number> = new Float64Array(n);
      for (let step = 1; step <= 3; step++) {
        const g = rng.normals(n, 0.1 * step);
        gpu.write(G, g);
        const [pd, md, vd, dd] = await gpu.run(
          (rec) => adamwDelta(rec, { param: P, grad: G, m: M, v: V }, D, { ...hyper, step }),
          [P, M, V, D],
        );
        const ref = adamwRef(p, g, m, v, { ...hyper, step });
        const errs = [relError(md, ref.m), relError(vd, ref.v), relError(dd, ref.delta)];
        console.log(
          `adamw delta step ${step} rel ${errs.map((e) => e.toExponential(2)).join(" ")}`,
        );
        for (const e of errs) assert.ok(e < 1e-5, `${errs}`);
        assert.ok(sameBits(pd as Float32Array, p), "parameter unchanged");
        m = md;
        v = vd;
      }
      for (const x of [P, G, M, V, D]) gpu.release(x);
    });

    await t.step("AdamW in place over several steps", async () => {
      const n = 1025;
      let p: ArrayLike<number> = rng.normals(n);
      const hyper = { lr: 3e-3, weightDecay: 0.01, beta1: 0.8, beta2: 0.99, eps: 1e-6 };
      const P = gpu.upload(Float32Array.from(p)),
        G = gpu.tensor([n]),
        M = gpu.zeros([n]),
        V = gpu.zeros([n]);
      let m: ArrayLike<number> = new Float64Array(n), v: ArrayLike<number> = new Float64Array(n);
      for (let step = 1; step <= 4; step++) {
        const g = rng.normals(n);
        gpu.write(G, g);
        const [pd] = await gpu.run(
          (rec) => adamwUpdate(rec, { param: P, grad: G, m: M, v: V }, { ...hyper, step }),
          [P],
        );
        const ref = adamwRef(p, g, m, v, { ...hyper, step });
        const want = Float64Array.from(p, (x, i) => x + ref.delta[i]);
        const upd = relError(Float64Array.from(pd, (x, i) => x - p[i]), ref.delta);
        console.log(
          `adamw in-place step ${step} rel ${relError(pd, want).toExponential(2)} (update ${
            upd.toExponential(2)
          })`,
        );
        assert.ok(relError(pd, want) < 1e-6 && upd < 1e-4);
        p = pd;
        m = ref.m;
        v = ref.v;
      }
      for (const x of [P, G, M, V]) gpu.release(x);
    });

    await t.step("SGD delta and in place, with weight decay", async () => {
      const n = 300;
      const p = rng.normals(n), g = rng.normals(n);
      const h = { lr: 0.05, weightDecay: 0.2 };
      const P = gpu.upload(p), G = gpu.upload(g), D = gpu.tensor([n]), Q = gpu.upload(p);
      const [d, q] = await gpu.run((rec) => {
        sgdDelta(rec, D, P, G, h);
        sgdUpdate(rec, Q, G, h);
      }, [D, Q]);
      const ref = sgdRef(p, g, h);
      assert.ok(relError(d, ref) < 1e-6);
      assert.ok(relError(q, Float64Array.from(p, (x, i) => x + ref[i])) < 1e-6);
      for (const x of [P, G, D, Q]) gpu.release(x);
    });

    await t.step("global norm over several tensors and clipping", async () => {
      const xs = [rng.normals(10), rng.normals(300), rng.normals(1)];
      const T = xs.map((x) => gpu.upload(x));
      const OUT = gpu.tensor([1]), PART = gpu.tensor([3]);
      const ss = xs.reduce((a, x) => a + x.reduce((b, y) => b + y * y, 0), 0);
      const norm = Math.sqrt(ss);
      for (const maxNorm of [norm / 4, norm * 2]) {
        for (const [i, x] of xs.entries()) gpu.write(T[i], x);
        const res = await gpu.run((rec) => {
          sumSquares(rec, OUT, PART, T);
          clipByGlobalNorm(rec, T, OUT, maxNorm);
        }, [OUT, ...T]);
        assert.ok(Math.abs(res[0][0] - ss) / ss < 1e-6, `sum of squares ${res[0][0]} vs ${ss}`);
        const coef = Math.min(1, maxNorm / (norm + 1e-6));
        xs.forEach((x, i) =>
          assert.ok(relError(res[i + 1], Array.from(x, (y) => y * coef)) < 1e-6)
        );
      }
      const a = await gpu.run((rec) => sumSquares(rec, OUT, PART, T), [OUT]);
      const b = await gpu.run((rec) => sumSquares(rec, OUT, PART, T), [OUT]);
      assert.ok(sameBits(a[0], b[0]));
      for (const x of [...T, OUT, PART]) gpu.release(x);
    });

    await t.step("bad hyperparameters and sizes give GpuShapeError", () => {
      const a = gpu.tensor([4]), b = gpu.tensor([4]), c = gpu.tensor([4]), d = gpu.tensor([4]);
      const rec = gpu.record();
      try {
        assert.throws(
          () => adamwUpdate(rec, { param: a, grad: b, m: c, v: d }, { lr: 1e-3, step: 0 }),
          /step/,
        );
        assert.throws(
          () =>
            adamwUpdate(rec, { param: a, grad: b, m: c, v: gpu.tensor([5]) }, {
              lr: 1e-3,
              step: 1,
            }),
          GpuShapeError,
        );
        assert.throws(() => sgdDelta(rec, gpu.tensor([3]), a, b, { lr: 1 }), GpuShapeError);
        assert.throws(() => sumSquares(rec, gpu.tensor([1]), gpu.tensor([2]), [a]), GpuShapeError);
        assert.throws(() => clipByGlobalNorm(rec, [a], gpu.tensor([1]), 0), GpuShapeError);
      } finally {
        rec.discard();
      }
    });
  } finally {
    gpu.close();
  }
});

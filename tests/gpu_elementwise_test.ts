// Elementwise kernels (add, accumulate, scale, copy, fill) and SwiGLU forward/backward against
// float64.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError } from "../gpu/errors.ts";
import { accumulate, add, axpby, copy, fill, scale } from "../gpu/kernels/elementwise.ts";
import { swigluBackward, swigluForward } from "../gpu/kernels/swiglu.ts";
import { swigluBackwardRef, swigluRef } from "../gpu/reference.ts";
import { dot, finiteDiffError, relError } from "../gpu/check.ts";
import { Rng } from "../core/rng.ts";

Deno.test("gpu elementwise", async (t) => {
  const gpu = await Gpu.open();
  const rng = new Rng(606);
  try {
    await t.step("add, accumulate (in place), scale, copy, fill", async () => {
      for (const n of [1, 255, 257, 1000]) {
        const a = rng.normals(n), b = rng.normals(n);
        const A = gpu.upload(a, [n]), B = gpu.upload(b, [n]);
        const S = gpu.tensor([n]), Y = gpu.upload(b, [n]), Z = gpu.tensor([n]), C = gpu.tensor([n]);
        const F = gpu.tensor([n]), I = gpu.upload(a, [n]);
        const [s, y, z, c, f, i] = await gpu.run((rec) => {
          add(rec, S, A, B);
          accumulate(rec, Y, A, -0.5);
          scale(rec, Z, A, 3);
          copy(rec, C, B);
          fill(rec, F, 2.5);
          scale(rec, I, I, 0.25);
        }, [S, Y, Z, C, F, I]);
        assert.ok(relError(s, Array.from(a, (v, k) => v + b[k])) < 1e-7);
        assert.ok(relError(y, Array.from(a, (v, k) => b[k] - 0.5 * v)) < 1e-7);
        assert.ok(relError(z, Array.from(a, (v) => 3 * v)) < 1e-7);
        assert.deepEqual(c, b);
        assert.ok(f.every((v) => v === 2.5));
        assert.ok(relError(i, Array.from(a, (v) => 0.25 * v)) === 0);
        for (const x of [A, B, S, Y, Z, C, F, I]) gpu.release(x);
      }
    });

    await t.step("swiglu forward and backward against float64", async () => {
      for (const [T, I] of [[1, 1], [9, 37], [64, 344]]) {
        const n = T * I;
        // Gates spread wide enough to exercise both tails of the sigmoid.
        const g = rng.normals(n, 4), u = rng.normals(n), dh = rng.normals(n);
        const G = gpu.upload(g, [T, I]), U = gpu.upload(u, [T, I]), DH = gpu.upload(dh, [T, I]);
        const H = gpu.tensor([T, I]), DG = gpu.tensor([T, I]), DU = gpu.tensor([T, I]);
        const [h, dg, du] = await gpu.run((rec) => {
          swigluForward(rec, H, G, U);
          swigluBackward(rec, DG, DU, DH, G, U);
        }, [H, DG, DU]);
        const ref = swigluBackwardRef(dh, g, u);
        const errs = [relError(h, swigluRef(g, u)), relError(dg, ref.dg), relError(du, ref.du)];
        console.log(`swiglu ${T}x${I} rel ${errs.map((e) => e.toExponential(2)).join(" ")}`);
        for (const e of errs) assert.ok(e < 1e-5, `${errs}`);
        for (const x of [G, U, DH, H, DG, DU]) gpu.release(x);
      }
    });

    await t.step("swiglu reference gradients match finite differences", () => {
      const n = 12;
      const g = Float64Array.from(rng.normals(n, 3)),
        u = Float64Array.from(rng.normals(n)),
        r = rng.normals(n);
      const ref = swigluBackwardRef(r, g, u);
      const eg = finiteDiffError((x) => dot(swigluRef(x, u), r), g, ref.dg, [0, 3, 7, 11]);
      const eu = finiteDiffError((x) => dot(swigluRef(g, x), r), u, ref.du, [1, 5, 10]);
      assert.ok(eg < 1e-7 && eu < 1e-7, `${eg} ${eu}`);
    });

    await t.step("size mismatches give GpuShapeError", () => {
      const rec = gpu.record();
      try {
        assert.throws(
          () => add(rec, gpu.tensor([4]), gpu.tensor([4]), gpu.tensor([5])),
          GpuShapeError,
        );
        assert.throws(
          () => axpby(rec, gpu.tensor([4]), gpu.tensor([4], "i32"), null, 1, 0),
          GpuShapeError,
        );
        assert.throws(
          () => swigluForward(rec, gpu.tensor([2, 3]), gpu.tensor([2, 3]), gpu.tensor([3, 3])),
          GpuShapeError,
        );
      } finally {
        rec.discard();
      }
    });
  } finally {
    gpu.close();
  }
});

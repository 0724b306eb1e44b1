// RMSNorm forward/backward against the float64 reference; the reference gradients against
// finite differences of the reference forward. (H = 1 is left out: there dx is eps-sized
// cancellation that f32 cannot resolve, a property of the function, not of the kernel.)
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError } from "../gpu/errors.ts";
import { rmsnormBackward, rmsnormForward, rmsnormWeightGrad } from "../gpu/kernels/rmsnorm.ts";
import { rmsnormBackwardRef, rmsnormRef } from "../gpu/reference.ts";
import { dot, finiteDiffError, relError, sameBits } from "../gpu/check.ts";
import { Rng } from "../core/rng.ts";

const EPS = 1e-5;

Deno.test("gpu rmsnorm", async (t) => {
  const gpu = await Gpu.open();
  const rng = new Rng(202);
  try {
    await t.step("forward, backward and weight gradient against float64", async () => {
      // 9000 rows: the weight gradient sums three blocks of rows; 8192: a real hidden size.
      for (const [T, H] of [[1, 4], [5, 7], [67, 33], [130, 64], [9000, 24], [3, 8192]]) {
        const x = rng.normals(T * H, 2), w = rng.normals(H), dy = rng.normals(T * H);
        const dx0 = rng.normals(T * H), dw0 = rng.normals(H);
        const X = gpu.upload(x, [T, H]), W = gpu.upload(w, [H]), DY = gpu.upload(dy, [T, H]);
        const Y = gpu.tensor([T, H]), R = gpu.tensor([T]);
        const DX = gpu.upload(dx0, [T, H]), DXA = gpu.upload(dx0, [T, H]);
        const DW = gpu.upload(dw0, [H]), DWA = gpu.upload(dw0, [H]);
        const [y, rstd, dx, dxa, dw, dwa] = await gpu.run((rec) => {
          rmsnormForward(rec, Y, R, X, W, EPS);
          rmsnormBackward(rec, DX, DY, X, W, R);
          rmsnormBackward(rec, DXA, DY, X, W, R, true);
          rmsnormWeightGrad(rec, DW, DY, X, R);
          rmsnormWeightGrad(rec, DWA, DY, X, R, true);
        }, [Y, R, DX, DXA, DW, DWA]);
        const ref = rmsnormRef(x, w, T, H, EPS);
        const g = rmsnormBackwardRef(dy, x, w, T, H, EPS);
        const errs = {
          y: relError(y, ref.y),
          rstd: relError(rstd, ref.rstd),
          dx: relError(dx, g.dx),
          dxAcc: relError(dxa, g.dx.map((v, i) => v + dx0[i])),
          dw: relError(dw, g.dw),
          dwAcc: relError(dwa, g.dw.map((v, i) => v + dw0[i])),
        };
        console.log(
          `rmsnorm ${T}x${H}`,
          Object.entries(errs).map(([k, e]) => `${k} ${e.toExponential(2)}`).join(" "),
        );
        for (const [k, e] of Object.entries(errs)) assert.ok(e < 1e-5, `${T}x${H} ${k}: ${e}`);
        for (const q of [X, W, DY, Y, R, DX, DXA, DW, DWA]) gpu.release(q);
      }
    });

    await t.step("reference gradients match finite differences", () => {
      const T = 3, H = 6;
      const x = Float64Array.from(rng.normals(T * H)), w = Float64Array.from(rng.normals(H));
      const dy = rng.normals(T * H);
      const g = rmsnormBackwardRef(dy, x, w, T, H, EPS);
      const at = [0, 4, 7, 11, 17];
      const ex = finiteDiffError((xx) => dot(rmsnormRef(xx, w, T, H, EPS).y, dy), x, g.dx, at);
      const ew = finiteDiffError((ww) => dot(rmsnormRef(x, ww, T, H, EPS).y, dy), w, g.dw, [
        0,
        2,
        5,
      ]);
      console.log(`rmsnorm finite differences dx ${ex.toExponential(2)} dw ${ew.toExponential(2)}`);
      assert.ok(ex < 1e-6 && ew < 1e-6, `${ex} ${ew}`);
    });

    await t.step("deterministic and shape-checked", async () => {
      const X = gpu.upload(rng.normals(40 * 50), [40, 50]), W = gpu.upload(rng.normals(50), [50]);
      const Y = gpu.tensor([40, 50]), R = gpu.tensor([40]);
      const DW = gpu.tensor([50]);
      const run = () =>
        gpu.run((rec) => {
          rmsnormForward(rec, Y, R, X, W, EPS);
          rmsnormWeightGrad(rec, DW, Y, X, R);
        }, [Y, DW]);
      const [a, b] = [await run(), await run()];
      assert.ok(sameBits(a[0], b[0]) && sameBits(a[1], b[1]));
      const rec = gpu.record();
      try {
        assert.throws(() => rmsnormForward(rec, Y, R, X, gpu.tensor([49]), EPS), GpuShapeError);
        assert.throws(() => rmsnormForward(rec, Y, gpu.tensor([41]), X, W, EPS), GpuShapeError);
        assert.throws(() => rmsnormBackward(rec, gpu.tensor([40, 49]), Y, X, W, R), GpuShapeError);
      } finally {
        rec.discard();
      }
    });
  } finally {
    gpu.close();
  }
});

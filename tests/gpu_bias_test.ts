// Linear-layer bias: y += b and db = Σ_rows dy against float64, at sizes that take one block
// of rows, several (9000 rows) and a real width; determinism and shape errors.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError } from "../gpu/errors.ts";
import { biasBackward, biasForward } from "../gpu/kernels/bias.ts";
import { biasGradRef, biasRef } from "../gpu/reference.ts";
import { relError, sameBits } from "../gpu/check.ts";
import { Rng } from "../core/rng.ts";

Deno.test("gpu bias", async (t) => {
  const gpu = await Gpu.open();
  const rng = new Rng(909);
  try {
    await t.step("forward and gradient against float64", async () => {
      for (const [T, N] of [[1, 3], [7, 65], [9000, 20], [3, 4864]]) {
        const y = rng.normals(T * N), b = rng.normals(N), dy = rng.normals(T * N);
        const db0 = rng.normals(N);
        const Y = gpu.upload(y, [T, N]), B = gpu.upload(b, [N]), DY = gpu.upload(dy, [T, N]);
        const DB = gpu.tensor([N]), DBA = gpu.upload(db0, [N]);
        const [yo, db, dba] = await gpu.run((rec) => {
          biasForward(rec, Y, B);
          biasBackward(rec, DB, DY);
          biasBackward(rec, DBA, DY, true);
        }, [Y, DB, DBA]);
        const g = biasGradRef(dy, N);
        const errs = {
          y: relError(yo, biasRef(y, b, N)),
          db: relError(db, g),
          dbAcc: relError(dba, g.map((v, i) => v + db0[i])),
        };
        console.log(
          `bias ${T}x${N}`,
          Object.entries(errs).map(([k, e]) => `${k} ${e.toExponential(2)}`).join(" "),
        );
        // y + b is one rounding of the exact sum.
        assert.ok(errs.y < 1e-7, `y ${errs.y}`);
        for (const [k, e] of Object.entries(errs)) assert.ok(e < 1e-5, `${T}x${N} ${k}: ${e}`);
        for (const x of [Y, B, DY, DB, DBA]) gpu.release(x);
      }
    });

    await t.step("deterministic; shapes are checked", async () => {
      const T = 9000, N = 12;
      const DY = gpu.upload(rng.normals(T * N), [T, N]);
      const DB = gpu.tensor([N]);
      const run = () => gpu.run((rec) => biasBackward(rec, DB, DY), [DB]);
      const [a] = await run(), [b] = await run();
      assert.ok(sameBits(a, b));
      const rec = gpu.record();
      try {
        assert.throws(() => biasForward(rec, DY, gpu.tensor([N + 1])), GpuShapeError);
        assert.throws(() => biasBackward(rec, gpu.tensor([N - 1]), DY), GpuShapeError);
      } finally {
        rec.discard();
      }
      gpu.release(DY);
      gpu.release(DB);
    });
  } finally {
    gpu.close();
  }
});

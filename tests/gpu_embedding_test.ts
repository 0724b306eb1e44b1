// Embedding gather and its deterministic backward against float64.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError } from "../gpu/errors.ts";
import {
  embeddingBackward,
  embeddingForward,
  EmbeddingGradPlan,
} from "../gpu/kernels/embedding.ts";
import { embeddingBackwardRef, embeddingRef } from "../gpu/reference.ts";
import { dot, finiteDiffError, relError, sameBits } from "../gpu/check.ts";
import { Rng } from "../core/rng.ts";

Deno.test("gpu embedding", async (t) => {
  const gpu = await Gpu.open();
  const rng = new Rng(404);
  try {
    await t.step("forward and backward (repeated and absent tokens) against float64", async () => {
      for (const [T, V, H] of [[1, 3, 5], [40, 11, 70], [130, 259, 16]]) {
        const table = rng.normals(V * H), dy = rng.normals(T * H), d0 = rng.normals(V * H);
        // Few distinct ids so that tokens repeat and some vocab rows stay unused.
        const tokens = Int32Array.from({ length: T }, () => rng.int(Math.max(1, Math.ceil(V / 2))));
        const TAB = gpu.upload(table, [V, H]),
          TOK = gpu.upload(tokens),
          DY = gpu.upload(dy, [T, H]);
        const Y = gpu.tensor([T, H]),
          D = gpu.upload(rng.normals(V * H), [V, H]),
          DA = gpu.upload(d0, [V, H]);
        const plan = new EmbeddingGradPlan(gpu, T + 3, V);
        plan.set(tokens);
        const [y, d, da] = await gpu.run((rec) => {
          embeddingForward(rec, Y, TAB, TOK);
          embeddingBackward(rec, D, DY, plan);
          embeddingBackward(rec, DA, DY, plan, true);
        }, [Y, D, DA]);
        const ref = embeddingBackwardRef(dy, tokens, V, H);
        const errs = [
          relError(y, embeddingRef(table, tokens, H)),
          relError(d, ref),
          relError(da, ref.map((v, i) => v + d0[i])),
        ];
        console.log(
          `embedding T${T} V${V} H${H} rel ${errs.map((e) => e.toExponential(2)).join(" ")}`,
        );
        for (const e of errs) assert.ok(e < 1e-6, `${errs}`);
        for (const q of [TAB, TOK, DY, Y, D, DA]) gpu.release(q);
        plan.release();
      }
    });

    await t.step("reference backward matches finite differences", () => {
      const V = 5, H = 3, tokens = [4, 0, 4, 2];
      const table = Float64Array.from(rng.normals(V * H));
      const r = rng.normals(tokens.length * H);
      const g = embeddingBackwardRef(r, tokens, V, H);
      const e = finiteDiffError((tb) => dot(embeddingRef(tb, tokens, H), r), table, g, [
        0,
        4,
        7,
        12,
        14,
      ]);
      assert.ok(e < 1e-7, `fd ${e}`);
    });

    await t.step(
      "deterministic; out-of-vocab ids: NaN in the kernel, typed error in the plan",
      async () => {
        const T = 300, V = 7, H = 9;
        const tokens = Int32Array.from({ length: T }, () => rng.int(V));
        const plan = new EmbeddingGradPlan(gpu, T, V);
        plan.set(tokens);
        const DY = gpu.upload(rng.normals(T * H), [T, H]);
        const D1 = gpu.tensor([V, H]), D2 = gpu.tensor([V, H]);
        const [a] = await gpu.run((rec) => embeddingBackward(rec, D1, DY, plan), [D1]);
        const [b] = await gpu.run((rec) => embeddingBackward(rec, D2, DY, plan), [D2]);
        assert.ok(sameBits(a, b));

        const TAB = gpu.upload(rng.normals(V * H), [V, H]);
        const TOK = gpu.upload(new Int32Array([1, V, -3]));
        const Y = gpu.tensor([3, H]);
        const [y] = await gpu.run((rec) => embeddingForward(rec, Y, TAB, TOK), [Y]);
        assert.ok(y.slice(0, H).every(Number.isFinite) && y.slice(H).every(Number.isNaN));

        assert.throws(() => plan.set(new Int32Array([0, V])), GpuShapeError);
        assert.throws(() => plan.set(new Int32Array(T + 1)), GpuShapeError);
        const rec = gpu.record();
        try {
          assert.throws(
            () => embeddingBackward(rec, gpu.tensor([V + 1, H]), DY, plan),
            GpuShapeError,
          );
          assert.throws(
            () => embeddingForward(rec, Y, TAB, gpu.upload(new Float32Array(3))),
            GpuShapeError,
          );
        } finally {
          rec.discard();
        }
        plan.release();
      },
    );
  } finally {
    gpu.close();
  }
});

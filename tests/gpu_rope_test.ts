// RoPE (Hugging Face rotate-half layout): table, forward and backward against float64.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError } from "../gpu/errors.ts";
import {
  createRopeTable,
  ropeBackward,
  ropeForward,
  ropeTableValues,
} from "../gpu/kernels/rope.ts";
import { ropeRef } from "../gpu/reference.ts";
import { dot, finiteDiffError, relError } from "../gpu/check.ts";
import { Rng } from "../core/rng.ts";

Deno.test("gpu rope", async (t) => {
  const gpu = await Gpu.open();
  const rng = new Rng(303);
  try {
    await t.step("table: cos/sin of pos·theta^(-2d/hd) within f32 angle rounding", () => {
      const hd = 16, P = 64, theta = 500;
      const { cos, sin } = ropeTableValues({ headDim: hd, theta, maxPositions: P });
      let worst = 0;
      for (let p = 0; p < P; p++) {
        for (let d = 0; d < hd / 2; d++) {
          const angle = p * Math.pow(theta, (-2 * d) / hd);
          worst = Math.max(
            worst,
            Math.abs(cos[p * 8 + d] - Math.cos(angle)),
            Math.abs(sin[p * 8 + d] - Math.sin(angle)),
          );
        }
      }
      assert.ok(worst < 1e-5, `table error ${worst}`);
    });

    await t.step("table from explicit inverse frequencies (scaled RoPE)", () => {
      const invFreq = [1, 0.25, 0.0123, 1e-4];
      const { cos, sin } = ropeTableValues({ headDim: 8, theta: 1, maxPositions: 40, invFreq });
      for (let p = 0; p < 40; p++) {
        for (let d = 0; d < 4; d++) {
          const angle = Math.fround(p * Math.fround(invFreq[d]));
          assert.equal(cos[p * 4 + d], Math.fround(Math.cos(angle)));
          assert.equal(sin[p * 4 + d], Math.fround(Math.sin(angle)));
        }
      }
      assert.throws(
        () => ropeTableValues({ headDim: 8, theta: 1, maxPositions: 4, invFreq: [1, 2] }),
        GpuShapeError,
      );
      assert.throws(
        () => ropeTableValues({ headDim: 4, theta: 1, maxPositions: 4, invFreq: [1, NaN] }),
        GpuShapeError,
      );
    });

    await t.step("rotate-half pairing on a hand-worked case", async () => {
      // hd = 4, theta = 10000: frequencies 1 and 0.01; position 1. Element d pairs with d + 2.
      const table = createRopeTable(gpu, { headDim: 4, theta: 10000, maxPositions: 2 });
      const X = gpu.upload(new Float32Array([1, 2, 3, 4]), [1, 4]);
      const P = gpu.upload(new Int32Array([1]));
      const [y] = await gpu.run((rec) => ropeForward(rec, X, P, table, 1), [X]);
      const c1 = Math.cos(1), s1 = Math.sin(1), c2 = Math.cos(0.01), s2 = Math.sin(0.01);
      const want = [1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1, 4 * c2 + 2 * s2];
      assert.ok(relError(y, want) < 1e-6, `${y} vs ${want}`);
      for (const q of [X, P, table.cos, table.sin]) gpu.release(q);
    });

    await t.step("forward and backward on q and k (GQA widths) against float64", async () => {
      for (const [T, nH, nKV, hd] of [[1, 1, 1, 2], [7, 4, 2, 8], [37, 3, 1, 16]]) {
        const P = 50;
        const table = createRopeTable(gpu, { headDim: hd, theta: 500, maxPositions: P });
        const tab = ropeTableValues({ headDim: hd, theta: 500, maxPositions: P });
        const pos = Int32Array.from({ length: T }, () => rng.int(P));
        const q = rng.normals(T * nH * hd),
          k = rng.normals(T * nKV * hd),
          dq = rng.normals(T * nH * hd);
        const Q = gpu.upload(q, [T, nH * hd]), K = gpu.upload(k, [T, nKV * hd]);
        const DQ = gpu.upload(dq, [T, nH * hd]), POS = gpu.upload(pos);
        const [qo, ko, dqo] = await gpu.run((rec) => {
          ropeForward(rec, Q, POS, table, nH);
          ropeForward(rec, K, POS, table, nKV);
          ropeBackward(rec, DQ, POS, table, nH);
        }, [Q, K, DQ]);
        const errs = [
          relError(qo, ropeRef(q, pos, tab.cos, tab.sin, T, nH, hd)),
          relError(ko, ropeRef(k, pos, tab.cos, tab.sin, T, nKV, hd)),
          relError(dqo, ropeRef(dq, pos, tab.cos, tab.sin, T, nH, hd, true)),
        ];
        console.log(
          `rope T${T} nH${nH} nKV${nKV} hd${hd} rel ${
            errs.map((e) => e.toExponential(2)).join(" ")
          }`,
        );
        for (const e of errs) assert.ok(e < 1e-6, `${errs}`);
        for (const x of [Q, K, DQ, POS, table.cos, table.sin]) gpu.release(x);
      }
    });

    await t.step("reference backward matches finite differences", () => {
      const T = 3, nH = 2, hd = 6;
      const tab = ropeTableValues({ headDim: hd, theta: 100, maxPositions: 8 });
      const pos = [5, 0, 7];
      const x = Float64Array.from(rng.normals(T * nH * hd));
      const r = rng.normals(T * nH * hd);
      const g = ropeRef(r, pos, tab.cos, tab.sin, T, nH, hd, true);
      const e = finiteDiffError(
        (xx) => dot(ropeRef(xx, pos, tab.cos, tab.sin, T, nH, hd), r),
        x,
        g,
        [0, 5, 13, 30, 35],
      );
      assert.ok(e < 1e-7, `fd ${e}`);
    });

    await t.step("positions outside the table give NaN rows; bad widths throw", async () => {
      const table = createRopeTable(gpu, { headDim: 4, theta: 500, maxPositions: 4 });
      const X = gpu.upload(rng.normals(3 * 8), [3, 8]);
      const POS = gpu.upload(new Int32Array([0, 4, -1]));
      const [x] = await gpu.run((rec) => ropeForward(rec, X, POS, table, 2), [X]);
      assert.ok(x.slice(0, 8).every(Number.isFinite));
      assert.ok(x.slice(8).every(Number.isNaN));
      const rec = gpu.record();
      try {
        assert.throws(() => ropeForward(rec, X, POS, table, 3), GpuShapeError);
        assert.throws(
          () => ropeForward(rec, X, gpu.upload(new Int32Array(2)), table, 2),
          GpuShapeError,
        );
        assert.throws(
          () => createRopeTable(gpu, { headDim: 5, theta: 500, maxPositions: 4 }),
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

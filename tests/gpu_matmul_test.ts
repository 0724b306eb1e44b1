// Matmul kernels (NT, NN, TN; register and tiled implementations) against the float64
// reference, including shapes that are not tile multiples and skinny adapter shapes.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError } from "../gpu/errors.ts";
import { matmul, type MatmulLayout } from "../gpu/kernels/matmul.ts";
import { matmulRef } from "../gpu/reference.ts";
import { relError, sameBits } from "../gpu/check.ts";
import { Rng } from "../core/rng.ts";

const LAYOUTS: MatmulLayout[] = ["NT", "NN", "TN"];

function dims(layout: MatmulLayout, M: number, N: number, K: number) {
  return {
    a: layout === "TN" ? [K, M] : [M, K],
    b: layout === "NT" ? [N, K] : [K, N],
  };
}

Deno.test("gpu matmul", async (t) => {
  const gpu = await Gpu.open();
  const rng = new Rng(101);
  try {
    for (const variant of ["register", "tiled"] as const) {
      await t.step(`${variant}: every layout against float64, odd and skinny shapes`, async () => {
        // K % 4 == 0 takes the vec4-load kernels (with rows or columns that are, or are not,
        // multiples of four); odd K the scalar ones.
        const shapes = [
          [1, 1, 1],
          [3, 5, 7],
          [70, 33, 17],
          [5, 130, 9],
          [130, 4, 65],
          [65, 66, 67],
          [96, 16, 40],
          [68, 36, 20],
          [12, 132, 44],
          [130, 4, 64],
          [33, 65, 32],
          [9, 200, 8],
        ];
        for (const layout of LAYOUTS) {
          for (const [M, N, K] of shapes) {
            const d = dims(layout, M, N, K);
            const a = rng.normals(M * K);
            const b = rng.normals(N * K);
            const c0 = rng.normals(M * N);
            const alpha = rng.uniform(0.5, 1.5);
            const beta = rng.uniform(-1.5, 1.5);
            const A = gpu.upload(a, d.a);
            const B = gpu.upload(b, d.b);
            const C = gpu.upload(c0, [M, N]);
            const [c] = await gpu.run(
              (rec) => matmul(rec, layout, C, A, B, { alpha, beta, variant }),
              [C],
            );
            const err = relError(c, matmulRef(layout, M, N, K, a, b, c0, alpha, beta));
            console.log(`matmul ${variant} ${layout} ${M}x${N}x${K} rel ${err.toExponential(2)}`);
            assert.ok(err < 1e-5, `${variant} ${layout} ${M}x${N}x${K}: rel error ${err}`);
            for (const x of [A, B, C]) gpu.release(x);
          }
        }
      });
    }

    await t.step("adapter ranks r = 1..16: x·Aᵀ (NT), g_B (TN), g_A (TN), dY·B (NN)", async () => {
      const T = 48, inn = 24, out = 20;
      for (const r of [1, 2, 3, 4, 7, 8, 9, 16]) {
        const x = rng.normals(T * inn), A = rng.normals(r * inn), dy = rng.normals(T * out);
        const B = rng.normals(out * r);
        const X = gpu.upload(x, [T, inn]),
          Ad = gpu.upload(A, [r, inn]),
          DY = gpu.upload(dy, [T, out]);
        const Bd = gpu.upload(B, [out, r]);
        const XA = gpu.tensor([T, r]),
          GB = gpu.tensor([out, r]),
          DYB = gpu.tensor([T, r]),
          GA = gpu.tensor([r, inn]);
        const [xa, gb, dyb, ga] = await gpu.run((rec) => {
          matmul(rec, "NT", XA, X, Ad);
          matmul(rec, "TN", GB, DY, XA, { alpha: 2 });
          matmul(rec, "NN", DYB, DY, Bd);
          matmul(rec, "TN", GA, DYB, X, { alpha: 2 });
        }, [XA, GB, DYB, GA]);
        const xaRef = matmulRef("NT", T, r, inn, x, A, null);
        const dybRef = matmulRef("NN", T, r, out, dy, B, null);
        const errs = [
          relError(xa, xaRef),
          relError(gb, matmulRef("TN", out, r, T, dy, xaRef, null, 2)),
          relError(dyb, dybRef),
          relError(ga, matmulRef("TN", r, inn, T, dybRef, x, null, 2)),
        ];
        console.log(`adapter r=${r} rel ${errs.map((e) => e.toExponential(2)).join(" ")}`);
        for (const e of errs) assert.ok(e < 1e-5, `r=${r}: ${errs}`);
        for (const q of [X, Ad, DY, Bd, XA, GB, DYB, GA]) gpu.release(q);
      }
    });

    await t.step("register kernel with GPU-sized workgroups (64 invocations)", async () => {
      for (const layout of LAYOUTS) {
        for (const [M, N, K] of [[70, 300, 20], [300, 9, 17], [40, 260, 12]]) {
          const d = dims(layout, M, N, K);
          const a = rng.normals(M * K), b = rng.normals(N * K);
          const A = gpu.upload(a, d.a), B = gpu.upload(b, d.b), C = gpu.tensor([M, N]);
          const [c] = await gpu.run(
            (rec) => matmul(rec, layout, C, A, B, { variant: "register", registerWorkgroup: 64 }),
            [C],
          );
          const err = relError(c, matmulRef(layout, M, N, K, a, b, null));
          assert.ok(err < 1e-5, `${layout} ${M}x${N}x${K}: ${err}`);
          for (const x of [A, B, C]) gpu.release(x);
        }
      }
    });

    await t.step("beta = 0 never reads C (NaN in C does not leak)", async () => {
      for (const variant of ["register", "tiled"] as const) {
        const a = rng.normals(33 * 9), b = rng.normals(40 * 9);
        const A = gpu.upload(a, [33, 9]), B = gpu.upload(b, [40, 9]);
        const C = gpu.upload(new Float32Array(33 * 40).fill(NaN), [33, 40]);
        const [c] = await gpu.run((rec) => matmul(rec, "NT", C, A, B, { variant }), [C]);
        assert.ok(c.every(Number.isFinite));
        assert.ok(relError(c, matmulRef("NT", 33, 40, 9, a, b, null)) < 1e-5);
        for (const x of [A, B, C]) gpu.release(x);
      }
    });

    await t.step("deterministic: the same inputs give the same bits", async () => {
      const A = gpu.upload(rng.normals(77 * 130), [77, 130]);
      const B = gpu.upload(rng.normals(90 * 130), [90, 130]);
      const C1 = gpu.tensor([77, 90]), C2 = gpu.tensor([77, 90]);
      const [c1] = await gpu.run((rec) => matmul(rec, "NT", C1, A, B), [C1]);
      const [c2] = await gpu.run((rec) => matmul(rec, "NT", C2, A, B), [C2]);
      assert.ok(sameBits(c1, c2));
      for (const x of [A, B, C1, C2]) gpu.release(x);
    });

    await t.step("all implementations run the same FMA chain: identical bits", async () => {
      for (const layout of LAYOUTS) {
        for (const [M, N, K] of [[70, 33, 17], [64, 128, 32], [130, 4, 64]]) {
          const d = dims(layout, M, N, K);
          const A = gpu.upload(rng.normals(M * K), d.a), B = gpu.upload(rng.normals(N * K), d.b);
          const c0 = rng.normals(M * N);
          const outs = [];
          for (
            const o of [
              { variant: "register" as const },
              { variant: "tiled" as const },
              { variant: "register" as const, registerWorkgroup: 64 as const },
            ]
          ) {
            const C = gpu.upload(c0, [M, N]);
            const [c] = await gpu.run(
              (rec) => matmul(rec, layout, C, A, B, { ...o, alpha: 0.7, beta: 1 }),
              [C],
            );
            outs.push(c);
            gpu.release(C);
          }
          assert.ok(
            sameBits(outs[0], outs[1]) && sameBits(outs[0], outs[2]),
            `${layout} ${M}x${N}x${K}`,
          );
          gpu.release(A);
          gpu.release(B);
        }
      }
    });

    await t.step("bad shapes and aliasing give GpuShapeError", () => {
      const A = gpu.tensor([4, 5]), B = gpu.tensor([6, 5]), C = gpu.tensor([4, 6]);
      const rec = gpu.record();
      try {
        assert.throws(() => matmul(rec, "NT", C, A, gpu.tensor([6, 4])), GpuShapeError);
        assert.throws(() => matmul(rec, "NN", C, A, B), /matmulNN needs/);
        assert.throws(() => matmul(rec, "NT", gpu.tensor([4, 7]), A, B), GpuShapeError);
        assert.throws(() => matmul(rec, "NT", C, A.view([20]), B), GpuShapeError);
        const sq = gpu.tensor([5, 5]);
        assert.throws(() => matmul(rec, "NN", sq, sq, sq), /shares its buffer/);
        assert.throws(() => matmul(rec, "NT", C, gpu.tensor([4, 5], "i32"), B), GpuShapeError);
      } finally {
        rec.discard();
      }
    });
  } finally {
    gpu.close();
  }
});

// The matmul fusions (kernels/matmul_fused.ts): RMSNorm formed in the loads of NT's A (the
// layer forward) and TN's B (the weight gradient), and a residual added in the store. Each is
// checked, on fresh random inputs, for the bits of the separate passes it replaces (rmsnormForward
// then the plain matmul, the plain matmul then `add`), against float64 at tiny shapes and at a
// layer's shape (T = 512, d = 2048, n = 8192, sampled entries), with more than 65,535 workgroups,
// with the register and the tiled kernel, and by finite differences of the gradients.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError } from "../gpu/errors.ts";
import type { GpuTensor } from "../gpu/tensor.ts";
import type { Recorder } from "../gpu/recorder.ts";
import { add } from "../gpu/kernels/elementwise.ts";
import { matmul, type MatmulOptions } from "../gpu/kernels/matmul.ts";
import {
  rmsnormBackward,
  rmsnormForward,
  rmsnormRstd,
  rmsnormWeightGrad,
} from "../gpu/kernels/rmsnorm.ts";
import { matmulRef, normLinearRef, rmsnormBackwardRef } from "../gpu/reference.ts";
import { dot, finiteDiffError, relError, sameBits } from "../gpu/check.ts";
import { Rng } from "../core/rng.ts";

const EPS = 1e-5;

/** A kernel choice; `forwardOnly` leaves out the weight gradient (K = T past its loop bound). */
type Impl = Pick<MatmulOptions, "variant" | "tile"> & { forwardOnly?: boolean };

/** The fused forward y = rmsnorm(x)·Wᵀ (+ R) and weight gradient dW (+)= dyᵀ·rmsnorm(x). */
function fused(
  rec: Recorder,
  t: { y: GpuTensor; dW: GpuTensor; rstd: GpuTensor; x: GpuTensor; g: GpuTensor; W: GpuTensor },
  dy: GpuTensor,
  R: GpuTensor | null,
  impl: Impl,
): void {
  rmsnormRstd(rec, t.rstd, t.x, EPS);
  const norm = { rstd: t.rstd, gamma: t.g };
  matmul(rec, "NT", t.y, t.x, t.W, { ...impl, norm, residual: R ?? undefined });
  if (!impl.forwardOnly) matmul(rec, "TN", t.dW, dy, t.x, { ...impl, norm, alpha: 0.5, beta: 1 });
}

/** The same with the separate passes the fusions replace. */
function separate(
  rec: Recorder,
  t: { y: GpuTensor; dW: GpuTensor; rstd: GpuTensor; x: GpuTensor; g: GpuTensor; W: GpuTensor },
  dy: GpuTensor,
  R: GpuTensor | null,
  impl: Impl,
): void {
  const [T, F] = t.x.shape;
  const xn = rec.scratch([T, F], "f32", "x̂");
  rmsnormForward(rec, xn, t.rstd, t.x, t.g, EPS);
  if (R) {
    const tmp = rec.scratch(t.y.shape, "f32", "x̂·Wᵀ");
    matmul(rec, "NT", tmp, xn, t.W, impl);
    add(rec, t.y, R, tmp);
  } else matmul(rec, "NT", t.y, xn, t.W, impl);
  if (!impl.forwardOnly) matmul(rec, "TN", t.dW, dy, xn, { ...impl, alpha: 0.5, beta: 1 });
}

interface Case {
  x: Float32Array;
  g: Float32Array;
  w: Float32Array;
  r: Float32Array | null;
  dy: Float32Array;
  dW0: Float32Array;
}

function randomCase(rng: Rng, T: number, F: number, N: number, residual: boolean): Case {
  const g = rng.normals(F, 0.5);
  for (let i = 0; i < F; i++) g[i] += 1;
  return {
    x: rng.normals(T * F, 2),
    g,
    w: rng.normals(N * F, 1 / Math.sqrt(F)),
    r: residual ? rng.normals(T * N) : null,
    dy: rng.normals(T * N),
    dW0: rng.normals(N * F),
  };
}

/** Runs `body` (fused or separate) on fresh buffers; returns y, dW and rstd. */
async function runCase(
  gpu: Gpu,
  c: Case,
  T: number,
  F: number,
  N: number,
  body: typeof fused,
  impl: Impl,
): Promise<Float32Array[]> {
  const t = {
    y: gpu.tensor([T, N]),
    dW: gpu.upload(c.dW0, [N, F]),
    rstd: gpu.tensor([T]),
    x: gpu.upload(c.x, [T, F]),
    g: gpu.upload(c.g, [F]),
    W: gpu.upload(c.w, [N, F]),
  };
  const dy = gpu.upload(c.dy, [T, N]);
  const R = c.r ? gpu.upload(c.r, [T, N]) : null;
  const out = await gpu.run((rec) => body(rec, t, dy, R, impl), [t.y, t.dW, t.rstd]);
  for (const x of [...Object.values(t), dy, ...(R ? [R] : [])]) gpu.release(x);
  return out as Float32Array[];
}

/** dW0 + 0.5·dyᵀ·x̂ in float64. */
function weightGradRef(c: Case, xn: Float64Array, T: number, F: number, N: number): Float64Array {
  const d = matmulRef("TN", N, F, T, c.dy, xn, c.dW0, 0.5, 1);
  return d;
}

const IMPLS: [string, Impl][] = [
  ["register", { variant: "register" }],
  ["tiled 64x64x16/4x4", { variant: "tiled", tile: "64x64x16/4x4" }],
  ["tiled 128x128x8/8x8", { variant: "tiled", tile: "128x128x8/8x8" }],
];

Deno.test("matmul fusions: bits of the separate passes and float64 at tiny shapes", async () => {
  const gpu = await Gpu.open({ matmul: "tiled" });
  const rng = new Rng(4101);
  try {
    // T > N and T < N (the register kernel swaps the operands), F % 4 == 0 (vec4 loads along k
    // or the rows) and odd (scalar loads), rows not multiples of four.
    const shapes = [[1, 4, 1], [5, 7, 3], [8, 16, 12], [33, 20, 70], [70, 64, 9], [130, 36, 66]];
    for (const [name, impl] of IMPLS) {
      for (const [T, F, N] of shapes) {
        for (const residual of [false, true]) {
          const c = randomCase(rng, T, F, N, residual);
          const [y, dW, rstd] = await runCase(gpu, c, T, F, N, fused, impl);
          const [y0, dW0, rstd0] = await runCase(gpu, c, T, F, N, separate, impl);
          const what = `${name} ${T}x${F}x${N}${residual ? " +R" : ""}`;
          assert.ok(sameBits(rstd, rstd0), `${what}: rstd bits`);
          assert.ok(sameBits(y, y0), `${what}: forward bits differ from the separate passes`);
          assert.ok(sameBits(dW, dW0), `${what}: weight-gradient bits differ`);
          const ref = normLinearRef(c.x, c.g, c.w, c.r, T, F, N, EPS);
          const ey = relError(y, ref.y);
          const ew = relError(dW, weightGradRef(c, ref.xn, T, F, N));
          assert.ok(ey < 1e-5 && ew < 1e-5, `${what}: rel error y ${ey}, dW ${ew}`);
        }
      }
    }
  } finally {
    gpu.close();
  }
});

/** Relative error over the sampled entries (rows × columns) of a [rows, cols] product. */
function sampledError(
  out: Float32Array,
  cols: number,
  at: [number, number][],
  ref: (i: number, j: number) => number,
): number {
  let e = 0, n = 0;
  for (const [i, j] of at) {
    const r = ref(i, j);
    e += (out[i * cols + j] - r) ** 2;
    n += r * r;
  }
  return Math.sqrt(e / n);
}

// The tiled kernel runs at a fifth of the register kernel's speed on lavapipe: n = 2048 there.
for (const [name, impl, N] of [[...IMPLS[0], 8192], [...IMPLS[1], 2048]] as const) {
  Deno.test(`matmul fusions at a layer's size (T 512, d 2048, n ${N}), ${name}`, async () => {
    const gpu = await Gpu.open({ matmul: "tiled" });
    const rng = new Rng(4102);
    const T = 512, F = 2048;
    try {
      const c = randomCase(rng, T, F, N, true);
      const [y, dW, rstd] = await runCase(gpu, c, T, F, N, fused, impl);
      const [y0, dW0] = await runCase(gpu, c, T, F, N, separate, impl);
      assert.ok(sameBits(y, y0), "forward bits differ from the separate passes");
      assert.ok(sameBits(dW, dW0), "weight-gradient bits differ");
      // x̂ in float64, then 4096 sampled entries of y and of dW.
      const xn = new Float64Array(T * F);
      for (let t = 0; t < T; t++) {
        let ss = 0;
        for (let f = 0; f < F; f++) ss += c.x[t * F + f] ** 2;
        const r = 1 / Math.sqrt(ss / F + EPS);
        assert.ok(Math.abs(rstd[t] - r) <= 1e-6 * r, `rstd[${t}]`);
        for (let f = 0; f < F; f++) xn[t * F + f] = c.g[f] * c.x[t * F + f] * r;
      }
      const ys = Array.from({ length: 4096 }, () => [rng.int(T), rng.int(N)] as [number, number]);
      const ey = sampledError(y, N, ys, (t, n) => {
        let s = c.r![t * N + n];
        for (let f = 0; f < F; f++) s += xn[t * F + f] * c.w[n * F + f];
        return s;
      });
      const ws = Array.from({ length: 4096 }, () => [rng.int(N), rng.int(F)] as [number, number]);
      const ew = sampledError(dW, F, ws, (n, f) => {
        let s = 0;
        for (let t = 0; t < T; t++) s += c.dy[t * N + n] * xn[t * F + f];
        return c.dW0[n * F + f] + 0.5 * s;
      });
      console.log(
        `${name} ${T}x${F}x${N}: rel error y ${ey.toExponential(2)} dW ${ew.toExponential(2)}`,
      );
      assert.ok(ey < 1e-5 && ew < 1e-5, `rel error y ${ey}, dW ${ew}`);
    } finally {
      gpu.close();
    }
  });
}

Deno.test("matmul fusions: more than 65,535 row tiles (tiled 32x64, 65,537 workgroups)", async () => {
  const gpu = await Gpu.open({ matmul: "tiled" });
  const rng = new Rng(4103);
  try {
    const T = 65536 * 32 + 9, F = 4, N = 5;
    // The weight gradient's K would be T here, over the loop bound: the forward only.
    const impl: Impl = { variant: "tiled", tile: "32x64x16/4x4", forwardOnly: true };
    const c = randomCase(rng, T, F, N, true);
    const [y, dW] = await runCase(gpu, c, T, F, N, fused, impl);
    const [y0, dW0] = await runCase(gpu, c, T, F, N, separate, impl);
    assert.ok(sameBits(y, y0), "forward bits");
    assert.ok(sameBits(dW, dW0) && sameBits(dW, c.dW0), "dW untouched");
    // Float64 on the first and last 2,000 rows (the last row tiles sit in the grid's z).
    for (const t0 of [0, T - 2000]) {
      const rows = (a: ArrayLike<number>, w: number) =>
        Array.from({ length: 2000 * w }, (_, i) => a[t0 * w + i]);
      const ref = normLinearRef(rows(c.x, F), c.g, c.w, rows(c.r!, N), 2000, F, N, EPS);
      const err = relError(y.subarray(t0 * N, (t0 + 2000) * N), ref.y);
      assert.ok(err < 1e-5, `rows from ${t0}: rel error ${err}`);
    }
  } finally {
    gpu.close();
  }
});

Deno.test("matmul fusions: gradients by finite differences (float64 loss)", async () => {
  const gpu = await Gpu.open({ matmul: "tiled" });
  const rng = new Rng(4104);
  try {
    const T = 6, F = 12, N = 10;
    for (const [name, impl] of IMPLS.slice(0, 2)) {
      const c = randomCase(rng, T, F, N, true);
      c.dW0.fill(0);
      const G = c.dy; // L = Σ G ⊙ (rmsnorm(x, g)·Wᵀ + R)
      const t = {
        y: gpu.tensor([T, N]),
        dW: gpu.zeros([N, F]),
        rstd: gpu.tensor([T]),
        x: gpu.upload(c.x, [T, F]),
        g: gpu.upload(c.g, [F]),
        W: gpu.upload(c.w, [N, F]),
      };
      const dy = gpu.upload(G, [T, N]), R = gpu.upload(c.r!, [T, N]);
      const dln = gpu.tensor([T, F]), dx = gpu.tensor([T, F]), dg = gpu.tensor([F]);
      const [dWh, dxh, dgh] = await gpu.run((rec) => {
        fused(rec, t, dy, R, impl); // dW = 0.5·Gᵀ·x̂
        matmul(rec, "NN", dln, dy, t.W, impl);
        rmsnormBackward(rec, dx, dln, t.x, t.g, t.rstd);
        rmsnormWeightGrad(rec, dg, dln, t.x, t.rstd);
      }, [t.dW, dx, dg]) as Float32Array[];
      const x = Float64Array.from(c.x), g = Float64Array.from(c.g), w = Float64Array.from(c.w);
      const loss = () => dot(normLinearRef(x, g, w, c.r, T, F, N, EPS).y, G);
      const at = (n: number) => Array.from({ length: 8 }, () => rng.int(n));
      const dW = Float64Array.from(dWh, (v) => 2 * v);
      const errs = {
        x: finiteDiffError(loss, x, dxh, at(T * F)),
        g: finiteDiffError(loss, g, dgh, at(F)),
        W: finiteDiffError(loss, w, dW, at(N * F)),
      };
      // The float64 reference of the backward agrees too (dx, dg through rmsnormBackwardRef).
      const ref = rmsnormBackwardRef(matmulRef("NN", T, F, N, G, c.w, null), c.x, c.g, T, F, EPS);
      const ex = relError(dxh, ref.dx), eg = relError(dgh, ref.dw);
      console.log(`${name}: finite differences ${JSON.stringify(errs)}; dx ${ex}, dg ${eg}`);
      for (const [k, e] of Object.entries(errs)) assert.ok(e < 1e-4, `${name} ∂${k}: ${e}`);
      assert.ok(ex < 1e-5 && eg < 1e-5, `${name}: dx ${ex}, dg ${eg}`);
      for (const b of [...Object.values(t), dy, R, dln, dx, dg]) gpu.release(b);
    }
  } finally {
    gpu.close();
  }
});

Deno.test("matmul fusions: bad arguments are refused with GpuShapeError", async () => {
  const gpu = await Gpu.open();
  try {
    const x = gpu.zeros([4, 8]), W = gpu.zeros([6, 8]), y = gpu.zeros([4, 6]);
    const rstd = gpu.zeros([4]), g = gpu.zeros([8]);
    const rec = gpu.record();
    const norm = { rstd, gamma: g };
    const refuse = (f: () => void, re: RegExp) =>
      assert.throws(f, (e) => e instanceof GpuShapeError && re.test(e.message));
    refuse(() => matmul(rec, "NN", y, x, gpu.zeros([8, 6]), { norm }), /NT's A or TN's B/);
    refuse(() => matmul(rec, "NT", y, x, W, { norm: { rstd: g, gamma: g } }), /norm rstd/);
    refuse(() => matmul(rec, "NT", y, x, W, { norm: { rstd, gamma: rstd } }), /norm gamma/);
    refuse(() => matmul(rec, "NT", y, x, W, { residual: x }), /residual/);
    refuse(() => matmul(rec, "NT", y, x, W, { residual: y }), /shares C's buffer/);
    rec.discard();
  } finally {
    gpu.close();
  }
});

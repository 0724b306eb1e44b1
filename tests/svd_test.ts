import assert from "node:assert/strict";
import { Rng } from "../core/rng.ts";
import {
  orthonormalColumns,
  randomizedSvd,
  type RandomizedSvdOptions,
  singularValues,
  svd,
  SvdError,
  type SvdResult,
  topSvd,
} from "../train/linalg/svd.ts";
import { knownSpectrumMatrix, svdAgreement } from "../train/linalg/svd_check.ts";
import { SvdPool } from "../train/linalg/svd_pool.ts";
import { adaptableLinears, LINEAR_KINDS } from "../model/config.ts";
import { AdapterInitError } from "../train/methods/adapter_init.ts";
import type { InitOptions } from "../train/methods/init.ts";
import { randomizedSvdMatrices, randomizedSvdsAhead } from "../train/methods/init_svd.ts";
import { getMethod } from "../train/methods/registry.ts";
import { randomWeights, smallConfig } from "./support/model_gpu.ts";

function randomMatrix(rng: Rng, m: number, n: number): Float64Array {
  return Float64Array.from({ length: m * n }, () => rng.normal());
}

/** A random m×k matrix with orthonormal columns by twice-repeated Gram–Schmidt (test-local). */
function randomOrthonormal(rng: Rng, m: number, k: number): Float64Array {
  const Q = randomMatrix(rng, m, k);
  for (let j = 0; j < k; j++) {
    for (let pass = 0; pass < 2; pass++) {
      for (let p = 0; p < j; p++) {
        let dot = 0;
        for (let i = 0; i < m; i++) dot += Q[i * k + p] * Q[i * k + j];
        for (let i = 0; i < m; i++) Q[i * k + j] -= dot * Q[i * k + p];
      }
    }
    let nrm = 0;
    for (let i = 0; i < m; i++) nrm += Q[i * k + j] ** 2;
    nrm = Math.sqrt(nrm);
    for (let i = 0; i < m; i++) Q[i * k + j] /= nrm;
  }
  return Q;
}

/** `U diag(s) Vᵀ` from U [m, k], V [n, k]. */
function compose(U: Float64Array, s: number[], V: Float64Array, m: number, n: number) {
  const k = s.length;
  const A = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let c = 0; c < k; c++) acc += U[i * k + c] * s[c] * V[j * k + c];
      A[i * n + j] = acc;
    }
  }
  return A;
}

/** ‖A − U diag(S) Vt‖_F / ‖A‖_F (or the absolute error when A = 0). */
function reconstructionError(A: ArrayLike<number>, r: SvdResult): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < r.m; i++) {
    for (let j = 0; j < r.n; j++) {
      let acc = 0;
      for (let c = 0; c < r.k; c++) acc += r.U[i * r.k + c] * r.S[c] * r.Vt[c * r.n + j];
      num += (acc - A[i * r.n + j]) ** 2;
      den += A[i * r.n + j] ** 2;
    }
  }
  return Math.sqrt(num / (den || 1));
}

/** max |QᵀQ − I| over entries, for Q [rows, k] (columns) or its transpose (rows). */
function orthoError(Q: Float64Array, rows: number, k: number, asRows = false): number {
  let worst = 0;
  for (let a = 0; a < k; a++) {
    for (let b = 0; b < k; b++) {
      let dot = 0;
      for (let i = 0; i < rows; i++) {
        dot += asRows ? Q[a * rows + i] * Q[b * rows + i] : Q[i * k + a] * Q[i * k + b];
      }
      worst = Math.max(worst, Math.abs(dot - (a === b ? 1 : 0)));
    }
  }
  return worst;
}

function checkSvd(A: ArrayLike<number>, m: number, n: number, label: string, tol = 1e-12) {
  const r = svd(A, m, n);
  const k = Math.min(m, n);
  assert.equal(r.k, k);
  assert.equal(r.U.length, m * k);
  assert.equal(r.S.length, k);
  assert.equal(r.Vt.length, k * n);
  const rec = reconstructionError(A, r);
  const ou = orthoError(r.U, m, k);
  const ov = orthoError(r.Vt, n, k, true);
  assert.ok(rec < tol, `${label}: reconstruction ${rec}`);
  assert.ok(ou < tol, `${label}: UᵀU − I ${ou}`);
  assert.ok(ov < tol, `${label}: V Vᵀ − I ${ov}`);
  for (let i = 0; i < k; i++) {
    assert.ok(r.S[i] >= 0, `${label}: S[${i}] = ${r.S[i]} < 0`);
    if (i > 0) assert.ok(r.S[i] <= r.S[i - 1], `${label}: S not descending at ${i}`);
  }
  return r;
}

Deno.test("svd: random matrices of every shape reconstruct with orthonormal factors", () => {
  const rng = new Rng(2024);
  const shapes = [[1, 1], [1, 9], [9, 1], [2, 2], [7, 3], [3, 7], [33, 33], [64, 20], [20, 64]];
  for (const [m, n] of shapes) checkSvd(randomMatrix(rng, m, n), m, n, `${m}x${n}`);
  const m = 96, n = 80;
  const r = checkSvd(randomMatrix(rng, m, n), m, n, "96x80");
  console.log(`svd 96x80: orthonormality ${orthoError(r.U, m, n).toExponential(1)}`);
});

Deno.test("svd: singular values of matrices with a known spectrum", () => {
  const rng = new Rng(77);
  const cases: [string, number, number, number[]][] = [
    ["graded 1..1e-12", 40, 30, Array.from({ length: 30 }, (_, i) => 10 ** (-12 * i / 29))],
    ["repeated", 25, 25, [3, 3, 3, 2, 2, 1, 1, 1, 1, ...Array(16).fill(0.5)]],
    ["rank 4 of 20", 30, 20, [5, 4, 2, 1, ...Array(16).fill(0)]],
    ["wide, huge scale", 12, 30, Array.from({ length: 12 }, (_, i) => 1e150 / (i + 1))],
    ["tiny scale", 15, 15, Array.from({ length: 15 }, (_, i) => 1e-150 * (15 - i))],
  ];
  for (const [label, m, n, s] of cases) {
    const k = Math.min(m, n);
    const A = compose(randomOrthonormal(rng, m, k), s, randomOrthonormal(rng, n, k), m, n);
    const r = checkSvd(A, m, n, label, 1e-11);
    const values = singularValues(A, m, n);
    for (let i = 0; i < k; i++) {
      assert.ok(Math.abs(r.S[i] - s[i]) <= 1e-13 * s[0], `${label}: S[${i}] ${r.S[i]} vs ${s[i]}`);
      assert.ok(Math.abs(values[i] - r.S[i]) <= 1e-13 * s[0], `${label}: values-only S[${i}]`);
    }
  }
});

Deno.test("svd: special matrices (zero, identity, shift, rank one, zero column)", () => {
  const n = 6;
  const zero = new Float64Array(5 * 4);
  const rz = checkSvd(zero, 5, 4, "zero");
  assert.ok(rz.S.every((x) => x === 0));
  const eye = new Float64Array(n * n);
  for (let i = 0; i < n; i++) eye[i * n + i] = 1;
  assert.ok(checkSvd(eye, n, n, "identity").S.every((x) => Math.abs(x - 1) < 1e-15));
  // Upper shift: a bidiagonal with a zero diagonal, singular values 1 (×5) and 0.
  const shift = new Float64Array(n * n);
  for (let i = 0; i < n - 1; i++) shift[i * n + i + 1] = 1;
  const rs = checkSvd(shift, n, n, "shift");
  assert.deepEqual(Array.from(rs.S, (x) => Math.round(x * 1e12) / 1e12), [1, 1, 1, 1, 1, 0]);
  const rng = new Rng(5);
  const u = randomMatrix(rng, 8, 1);
  const v = randomMatrix(rng, 5, 1);
  const outer = compose(u, [1], v, 8, 5);
  const ro = checkSvd(outer, 8, 5, "rank one");
  let nu = 0;
  let nv = 0;
  for (const x of u) nu += x * x;
  for (const x of v) nv += x * x;
  assert.ok(Math.abs(ro.S[0] - Math.sqrt(nu * nv)) < 1e-13 * ro.S[0]);
  assert.ok(ro.S.slice(1).every((x) => x < 1e-14 * ro.S[0]));
  const zc = randomMatrix(rng, 7, 5);
  for (let i = 0; i < 7; i++) zc[i * 5 + 2] = 0;
  const rc = checkSvd(zc, 7, 5, "zero column");
  assert.ok(rc.S[4] < 1e-14 * rc.S[0]);
});

Deno.test("svd: deterministic, and the same bits for the same input", () => {
  const rng = new Rng(8);
  const A = randomMatrix(rng, 30, 20);
  const a = svd(A, 30, 20);
  const b = svd(Float64Array.from(A), 30, 20);
  assert.deepEqual(a, b);
  const ra = randomizedSvd(A, 30, 20, 5, { seed: 3, niter: 2 });
  const rb = randomizedSvd(A, 30, 20, 5, { seed: 3, niter: 2 });
  const rc = randomizedSvd(A, 30, 20, 5, { rng: new Rng(3), niter: 2 });
  assert.deepEqual(ra, rb);
  assert.deepEqual(ra, rc);
  const rd = randomizedSvd(A, 30, 20, 5, { seed: 4, niter: 2 });
  assert.notDeepEqual(ra.U, rd.U);
});

Deno.test("randomized svd matches the exact one on a decaying spectrum", () => {
  const rng = new Rng(99);
  const m = 120, n = 90, rank = 8;
  const s = Array.from({ length: n }, (_, i) => 0.7 ** i);
  const A = compose(randomOrthonormal(rng, m, n), s, randomOrthonormal(rng, n, n), m, n);
  const exact = svd(A, m, n);
  for (
    const [transposed, M, N, X] of [[false, m, n, A], [true, n, m, transposeOf(A, m, n)]] as const
  ) {
    const r = randomizedSvd(X, M, N, rank, { niter: 4, oversample: 8, seed: 1 });
    assert.equal(r.k, rank);
    assert.ok(orthoError(r.U, M, rank) < 1e-12, "U orthonormal");
    assert.ok(orthoError(r.Vt, N, rank, true) < 1e-12, "Vt orthonormal");
    const eU = transposed ? exact.Vt : exact.U;
    for (let c = 0; c < rank; c++) {
      assert.ok(Math.abs(r.S[c] - exact.S[c]) < 1e-10, `σ_${c}: ${r.S[c]} vs ${exact.S[c]}`);
      // The singular vectors agree up to sign.
      let dot = 0;
      for (let i = 0; i < M; i++) {
        dot += r.U[i * rank + c] * (transposed ? eU[c * M + i] : eU[i * exact.k + c]);
      }
      assert.ok(Math.abs(Math.abs(dot) - 1) < 1e-8, `u_${c} alignment ${dot}`);
    }
  }
  // Without power iterations the leading values are still close on this spectrum, but worse.
  const rough = randomizedSvd(A, m, n, rank, { niter: 0, oversample: 2, seed: 1 });
  const err0 = Math.abs(rough.S[rank - 1] - exact.S[rank - 1]);
  const err4 = Math.abs(
    randomizedSvd(A, m, n, rank, { niter: 4, oversample: 2, seed: 1 }).S[rank - 1] -
      exact.S[rank - 1],
  );
  assert.ok(err4 < err0, `power iterations improve σ_r: ${err4} vs ${err0}`);
});

function transposeOf(A: Float64Array, m: number, n: number): Float64Array {
  const T = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) T[j * m + i] = A[i * n + j];
  return T;
}

Deno.test("randomized svd on a flat spectrum and a rank-deficient matrix stays orthonormal", () => {
  const rng = new Rng(31);
  const m = 70, n = 50;
  const flat = randomMatrix(rng, m, n);
  const r = randomizedSvd(flat, m, n, 10, { niter: 2 });
  assert.ok(orthoError(r.U, m, 10) < 1e-12);
  assert.ok(orthoError(r.Vt, n, 10, true) < 1e-12);
  // Rank 3 with 12 requested components: the extra directions are still orthonormal.
  const low = compose(randomOrthonormal(rng, m, 3), [3, 2, 1], randomOrthonormal(rng, n, 3), m, n);
  const rl = randomizedSvd(low, m, n, 12, { niter: 3 });
  assert.ok(orthoError(rl.U, m, 12) < 1e-12);
  assert.ok(orthoError(rl.Vt, n, 12, true) < 1e-12);
  assert.ok(Math.abs(rl.S[0] - 3) < 1e-12 && Math.abs(rl.S[2] - 1) < 1e-12);
  assert.ok(rl.S[3] < 1e-12);
  assert.ok(reconstructionError(low, rl) < 1e-12);
});

Deno.test("topSvd: exact truncation equals the leading part of the full SVD", () => {
  const rng = new Rng(12);
  const A = randomMatrix(rng, 25, 18);
  const full = svd(A, 25, 18);
  const top = topSvd(A, 25, 18, 4);
  assert.deepEqual(top.S, full.S.slice(0, 4));
  assert.deepEqual(top.Vt, full.Vt.slice(0, 4 * 18));
  for (let i = 0; i < 25; i++) {
    for (let c = 0; c < 4; c++) assert.equal(top.U[i * 4 + c], full.U[i * 18 + c]);
  }
  const rand = topSvd(A, 25, 18, 4, { method: "randomized", niter: 6, seed: 2 });
  assert.equal(rand.k, 4);
  assert.ok(orthoError(rand.U, 25, 4) < 1e-12);
});

Deno.test("orthonormalColumns: an orthonormal basis of the column space", () => {
  const rng = new Rng(4);
  const m = 40, l = 9;
  const Y = randomMatrix(rng, m, l);
  const Q = orthonormalColumns(Y, m, l);
  assert.ok(orthoError(Q, m, l) < 1e-14);
  // Q Qᵀ Y = Y: the basis spans Y's columns.
  let err = 0;
  for (let c = 0; c < l; c++) {
    const proj = new Float64Array(l);
    for (let j = 0; j < l; j++) for (let i = 0; i < m; i++) proj[j] += Q[i * l + j] * Y[i * l + c];
    for (let i = 0; i < m; i++) {
      let back = 0;
      for (let j = 0; j < l; j++) back += Q[i * l + j] * proj[j];
      err = Math.max(err, Math.abs(back - Y[i * l + c]));
    }
  }
  assert.ok(err < 1e-13, `span error ${err}`);
  // Duplicate and zero columns still give an orthonormal Q.
  const dup = Float64Array.from(Y);
  for (let i = 0; i < m; i++) {
    dup[i * l + 3] = dup[i * l + 1];
    dup[i * l + 5] = 0;
  }
  assert.ok(orthoError(orthonormalColumns(dup, m, l), m, l) < 1e-14);
});

Deno.test("svd: bad input is an SvdError", () => {
  assert.throws(() => svd(new Float64Array(6), 2, 4), SvdError);
  assert.throws(() => svd(new Float64Array(0), 0, 0), SvdError);
  assert.throws(
    () => svd([1, NaN, 2, 3], 2, 2),
    (e: unknown) => e instanceof SvdError && /NaN/.test(e.message),
  );
  assert.throws(() => randomizedSvd(new Float64Array(12).fill(1), 3, 4, 4), SvdError);
  assert.throws(
    () => randomizedSvd(new Float64Array(12).fill(1), 3, 4, 2, { niter: -1 }),
    SvdError,
  );
  assert.throws(() => topSvd(new Float64Array(12).fill(1), 3, 4, 0), SvdError);
});

Deno.test("randomized svd at 1024x3584 (float32, known spectrum): orthonormal and on the top subspace", async () => {
  const m = 1024;
  const n = 3584;
  // A slow decay (σ_26/σ_16 ≈ 0.6, like real weights) and a fast one, where the float32 rounding
  // of W (~1e-7 relative) bounds the angles.
  for (const [decay, sTol, angleTol] of [[0.95, 1e-3, 0.05], [0.6, 1e-9, 1e-5]]) {
    const truth = knownSpectrumMatrix(
      m,
      n,
      Array.from({ length: 64 }, (_, i) => decay ** i),
      5,
      true,
    );
    const r = randomizedSvd(truth.W, m, n, 16, { niter: 4, seed: 2 });
    const a = svdAgreement(r, truth);
    assert.ok(a.orthonormality <= 1e-6, `orthonormality ${a.orthonormality}`);
    // float32 storage of W perturbs σ by ~1e-7 relative.
    assert.ok(
      a.singularValueError <= sTol + 1e-6,
      `σ error ${a.singularValueError} (decay ${decay})`,
    );
    assert.ok(
      a.leftAngle <= angleTol && a.rightAngle <= angleTol,
      `angles ${a.leftAngle}, ${a.rightAngle}`,
    );
    const again = randomizedSvd(truth.W, m, n, 16, { niter: 4, seed: 2 });
    assert.deepEqual(again.S, r.S);
    // The pool splits every product by row panels: the same bits for any number of threads.
    for (const threads of [2, 3]) {
      using pool = new SvdPool({ threads });
      assertSameBits(await pool.randomizedSvd(truth.W, m, n, 16, { niter: 4, seed: 2 }), r);
    }
  }
});

/** Every entry of U, S and Vt has the same bits (−0 and +0 differ). */
function assertSameBits(a: SvdResult, b: SvdResult, label = "") {
  assert.deepEqual([a.m, a.n, a.k], [b.m, b.n, b.k], label);
  for (const key of ["U", "S", "Vt"] as const) {
    const x = new Uint32Array(a[key].buffer, a[key].byteOffset, a[key].length * 2);
    const y = new Uint32Array(b[key].buffer, b[key].byteOffset, b[key].length * 2);
    assert.equal(x.length, y.length, `${label} ${key} length`);
    const i = x.findIndex((v, j) => v !== y[j]);
    assert.equal(i, -1, `${label} ${key}[${i >> 1}]: ${a[key][i >> 1]} vs ${b[key][i >> 1]}`);
  }
}

Deno.test("svd pool: the same bits as the single-threaded path with 1, 2 and 3 threads", async () => {
  const rng = new Rng(4242);
  // Odd shapes (rows not a multiple of the kernel's 4-row tile, fewer rows than threads·4),
  // float32 and float64 storage, tall and wide, with and without power iterations.
  const cases: [number, number, number, RandomizedSvdOptions, boolean][] = [
    [203, 517, 13, { niter: 3, seed: 11 }, true],
    [517, 203, 7, { niter: 2, seed: 12, oversample: 5 }, false],
    [9, 301, 2, { niter: 1, seed: 13 }, true],
    [130, 66, 64, { niter: 0, seed: 14, oversample: 3 }, false],
  ];
  const pools = [1, 2, 3].map((threads) => new SvdPool({ threads }));
  try {
    for (const [m, n, rank, options, f32] of cases) {
      const A64 = randomMatrix(rng, m, n);
      const A = f32 ? Float32Array.from(A64) : A64;
      const one = randomizedSvd(A, m, n, rank, options);
      assert.ok(orthoError(one.U, m, rank) < 1e-12, `${m}x${n}: U orthonormal`);
      for (const pool of pools) {
        // Several SVDs queued at once run one after the other, each with its own result.
        const [r, rT] = await Promise.all([
          pool.randomizedSvd(A, m, n, rank, options),
          pool.randomizedSvd(transposeOf(A64, m, n), n, m, rank, options),
        ]);
        assertSameBits(r, one, `${m}x${n} rank ${rank}, ${pool.threads} threads`);
        // A whole SVD on one of the pool's threads (several matrices at once) is the same too.
        assertSameBits(
          await pool.randomizedSvdOnOneThread(A, m, n, rank, options),
          one,
          `${m}x${n} rank ${rank} on one thread of ${pool.threads}`,
        );
        assertSameBits(
          rT,
          randomizedSvd(transposeOf(A64, m, n), n, m, rank, options),
          `${n}x${m} (transposed), ${pool.threads} threads`,
        );
      }
    }
    // A plain array and a shared Rng are accepted as by randomizedSvd.
    const B = Array.from(randomMatrix(rng, 40, 30));
    assertSameBits(
      await pools[1].randomizedSvd(B, 40, 30, 5, { rng: new Rng(8) }),
      randomizedSvd(B, 40, 30, 5, { rng: new Rng(8) }),
    );
  } finally {
    for (const pool of pools) pool.close();
  }
});

Deno.test("svd pool: agrees with the exact SVD's top subspace (known spectrum, 384x1152)", async () => {
  const m = 384, n = 1152, rank = 16;
  const truth = knownSpectrumMatrix(m, n, Array.from({ length: m }, (_, i) => 0.9 ** i), 21);
  const exact = svd(truth.W, m, n);
  using pool = new SvdPool({ threads: 2 });
  const r = await pool.randomizedSvd(truth.W, m, n, rank, { niter: 4, seed: 3 });
  // The exact SVD as the reference: its own factors, not the ones W was built from.
  const a = svdAgreement(r, {
    W: truth.W,
    U: exact.U,
    V: transposeOf(exact.Vt, exact.k, n),
    s: exact.S,
  });
  console.log(
    `pool vs exact 384x1152 rank 16: orthonormality ${a.orthonormality.toExponential(1)}, ` +
      `σ error ${a.singularValueError.toExponential(1)}, sin angles ` +
      `${a.leftAngle.toExponential(1)} / ${a.rightAngle.toExponential(1)}`,
  );
  assert.ok(a.orthonormality < 1e-13, `orthonormality ${a.orthonormality}`);
  // σ_16/σ_26 = 0.9^10 ≈ 0.35 per power step: 0.35^9 ≈ 1e-4 on the angles after 4 iterations.
  assert.ok(a.singularValueError < 1e-6, `σ error ${a.singularValueError}`);
  assert.ok(a.leftAngle < 1e-3 && a.rightAngle < 1e-3, `angles ${a.leftAngle}, ${a.rightAngle}`);
  // And the exact SVD recovers the spectrum W was built with.
  for (let i = 0; i < rank; i++) {
    assert.ok(Math.abs(exact.S[i] - truth.s[i]) < 1e-12, `exact σ_${i} ${exact.S[i]}`);
  }
});

Deno.test("svd pool: bad settings and a closed pool are SvdErrors", async () => {
  assert.throws(() => new SvdPool({ threads: 0 }), SvdError);
  assert.throws(() => new SvdPool({ threads: 1.5 }), SvdError);
  const pool = new SvdPool({ threads: 2 });
  try {
    assert.equal(pool.threads, 2);
    await assert.rejects(pool.randomizedSvd(new Float64Array(12).fill(1), 3, 4, 4), SvdError);
    await assert.rejects(
      pool.randomizedSvd([1, NaN, 2, 3], 2, 2, 1),
      (e: unknown) => e instanceof SvdError && /NaN/.test(e.message),
    );
    await assert.rejects(
      pool.randomizedSvdOnOneThread(new Float64Array(4).fill(1), 2, 2, 1, { rng: new Rng(1) }),
      (e: unknown) => e instanceof SvdError && /seed/.test(e.message),
    );
    await assert.rejects(pool.randomizedSvdOnOneThread([1, 2, Infinity, 3], 2, 2, 1), SvdError);
    // The pool still works after refusing bad input.
    const A = randomMatrix(new Rng(1), 12, 10);
    assertSameBits(await pool.randomizedSvd(A, 12, 10, 3), randomizedSvd(A, 12, 10, 3));
  } finally {
    pool.close();
  }
  await assert.rejects(
    pool.randomizedSvd(new Float64Array(4).fill(1), 2, 2, 1),
    (e: unknown) => e instanceof SvdError && /closed/.test(e.message),
  );
});

Deno.test("adapter init: SVDs computed ahead on the pool give the walk's factors bit for bit", async () => {
  const config = smallConfig({
    hidden_size: 48,
    intermediate_size: 80,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 31,
  });
  const weights = randomWeights(config, new Rng(17));
  const options: InitOptions = {
    workers: 3,
    rank: 4,
    alpha: 8,
    targets: [...LINEAR_KINDS],
    svd: "randomized",
    svdNiter: 2,
    seed: 5,
  };
  const names = adaptableLinears(config, options.targets).map((l) => l.name);
  assert.deepEqual(randomizedSvdMatrices(config, options), names);
  // With the exact SVD for every matrix there is nothing to compute ahead.
  assert.deepEqual(randomizedSvdMatrices(config, { ...options, svd: "exact" }), []);
  // 2 threads: the 14 matrices one per thread; 3 threads: 12 so, then 2 split over the threads.
  using pool = new SvdPool({ threads: 2 });
  using pool3 = new SvdPool({ threads: 3 });
  for (const [name, p] of [["hd-pissa", pool], ["pissa", pool], ["hd-pissa", pool3]] as const) {
    const method = getMethod(name);
    const components = method.svdComponents!(options);
    assert.equal(components, name === "hd-pissa" ? 12 : 4);
    const seen: string[] = [];
    const svds = await randomizedSvdsAhead(
      config,
      weights,
      options,
      components,
      p,
      (e) => seen.push(`${e.done}/${e.total}`),
    );
    assert.deepEqual([...svds.keys()], names);
    assert.deepEqual(seen, names.map((_, i) => `${i + 1}/${names.length}`));
    const walk = method.init(config, weights, options);
    const ahead = method.init(config, weights, { ...options, svds });
    for (const n of names) {
      const [a, b] = [walk.factors.get(n)!, ahead.factors.get(n)!];
      assert.equal(a.length, b.length);
      a.forEach((f, k) => {
        assert.deepEqual(b[k].A, f.A, `${name} ${n} A_${k}`);
        assert.deepEqual(b[k].B, f.B, `${name} ${n} B_${k}`);
      });
    }
    assert.deepEqual(ahead.residuals, walk.residuals);
  }
  assert.equal(getMethod("lora").svdComponents, undefined);
  // An SVD of another rank than the init takes is refused, not truncated silently.
  const [first] = names;
  const w = weights.get(first)!;
  const r5 = await pool.randomizedSvd(w.data, w.shape[0], w.shape[1], 5);
  assert.throws(
    () => getMethod("pissa").init(config, weights, { ...options, svds: new Map([[first, r5]]) }),
    (e: unknown) => e instanceof SvdError && /rank 5/.test(e.message),
  );
  // A weight that cannot be decomposed is named.
  const bad = new Map(weights);
  const broken = Float32Array.from(w.data);
  broken[7] = NaN;
  bad.set(first, { ...w, data: broken });
  await assert.rejects(
    randomizedSvdsAhead(config, bad, options, 4, pool),
    (e: unknown) => e instanceof AdapterInitError && e.matrix === first,
  );
});

// The randomized SVD with its passes over W on the WebGPU device (train/linalg/svd_gpu.ts),
// against a float64 reference: the exact SVD of a smaller matrix with a known spectrum, and at
// the Llama-3-8B MLP shape the known factors and the host path's result. Every input is fresh
// (the seed is drawn per run and named in each message).
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { f32BitsToBf16 } from "../gpu/half.ts";
import { randomizedSvd, svd, SvdError, type SvdResult } from "../train/linalg/svd.ts";
import {
  type KnownSpectrum,
  knownSpectrumMatrix,
  svdAgreement,
} from "../train/linalg/svd_check.ts";
import { gpuRandomizedSvd, uploadForSvd } from "../train/linalg/svd_gpu.ts";

const seed = crypto.getRandomValues(new Uint32Array(1))[0];

/** `r` as the "truth" of `svdAgreement`: its factors with V = Vtᵀ. */
function asKnown(r: SvdResult): KnownSpectrum {
  const V = new Float64Array(r.n * r.k);
  for (let i = 0; i < r.k; i++) {
    for (let j = 0; j < r.n; j++) V[j * r.k + i] = r.Vt[i * r.n + j];
  }
  return { W: new Float64Array(0), U: r.U, V, s: r.S };
}

/** The top `rank` triplets of the exact float64 SVD of `W [m, n]`. */
function exactTop(W: ArrayLike<number>, m: number, n: number, rank: number): SvdResult {
  const exact = svd(W, m, n);
  const U = new Float64Array(m * rank);
  for (let i = 0; i < m; i++) {
    for (let c = 0; c < rank; c++) U[i * rank + c] = exact.U[i * exact.k + c];
  }
  return { m, n, k: rank, U, S: exact.S.slice(0, rank), Vt: exact.Vt.slice(0, rank * n) };
}

function sameBits(a: SvdResult, b: SvdResult): boolean {
  return (["U", "S", "Vt"] as const).every((k) => a[k].every((v, i) => Object.is(v, b[k][i])));
}

Deno.test("gpu randomized svd: the exact float64 top subspace of a known spectrum, W in row blocks", async () => {
  // A small binding limit splits W into 9 row blocks of 64 rows, as a large W is split on a GPU.
  const gpu = await Gpu.open({ maxBindingBytes: 64 * 400 * 4 });
  try {
    const [m, n, rank] = [560, 400, 12];
    const spectrum = Array.from({ length: 120 }, (_, i) => 0.8 ** i);
    const t = knownSpectrumMatrix(m, n, spectrum, seed, true);
    const W = uploadForSvd(gpu, t.W as Float32Array, m, n);
    assert.ok(W.parts.length > 1, `W is in ${W.parts.length} block(s), the test needs several`);
    const r = await gpuRandomizedSvd(gpu, W, rank, { niter: 4, seed: seed + 1 });
    assert.deepEqual([r.m, r.n, r.k, r.U.length, r.S.length, r.Vt.length], [
      m,
      n,
      rank,
      m * rank,
      rank,
      rank * n,
    ]);
    // The reference: the exact float64 SVD of the same (f32-rounded) W.
    const top = exactTop(t.W, m, n, rank);
    const a = svdAgreement(r, asKnown(top));
    const msg = `seed ${seed}: ${JSON.stringify(a)}`;
    assert.ok(a.orthonormality < 1e-12, msg);
    assert.ok(a.singularValueError < 1e-5, msg);
    assert.ok(Math.max(a.leftAngle, a.rightAngle) < 1e-3, msg);
    // The same seed on the same device gives the same bits.
    const again = await gpuRandomizedSvd(gpu, W, rank, { niter: 4, seed: seed + 1 });
    assert.ok(sameBits(r, again), `seed ${seed}: a second run differs`);
    for (const p of W.parts) gpu.release(p);
  } finally {
    gpu.close();
  }
});

Deno.test("gpu randomized svd: a bf16 W (a worker's under --weights-dtype bf16) gives the exact top subspace of the rounded W", async () => {
  const gpu = await Gpu.open({ maxBindingBytes: 64 * 300 * 2 });
  try {
    const [m, n, rank] = [300, 300, 8];
    const spectrum = Array.from({ length: 100 }, (_, i) => 0.75 ** i);
    const t = knownSpectrumMatrix(m, n, spectrum, seed + 2, true);
    const bits = Uint16Array.from(new Uint32Array((t.W as Float32Array).buffer), f32BitsToBf16);
    const rounded = new Float32Array(Uint32Array.from(bits, (b) => b << 16).buffer);
    const W = gpu.uploadRows(bits, m, n, "W bf16", "bf16");
    assert.ok(W.parts.length > 1, `W is in ${W.parts.length} block(s), the test needs several`);
    const r = await gpuRandomizedSvd(gpu, W, rank, { niter: 4, seed });
    const a = svdAgreement(r, asKnown(exactTop(rounded, m, n, rank)));
    const msg = `seed ${seed}: ${JSON.stringify(a)}`;
    assert.ok(a.orthonormality < 1e-12, msg);
    assert.ok(a.singularValueError < 1e-5, msg);
    assert.ok(Math.max(a.leftAngle, a.rightAngle) < 1e-3, msg);
  } finally {
    gpu.close();
  }
});

Deno.test("gpu randomized svd: bad input is an SvdError", async () => {
  const gpu = await Gpu.open();
  try {
    const w = new Float32Array(40 * 30).map((_, i) => Math.sin(i));
    const W = uploadForSvd(gpu, w, 40, 30);
    await assert.rejects(() => gpuRandomizedSvd(gpu, W, 0), SvdError);
    await assert.rejects(() => gpuRandomizedSvd(gpu, W, 31), SvdError);
    await assert.rejects(() => gpuRandomizedSvd(gpu, W, 4, { niter: -1 }), SvdError);
    assert.throws(() => uploadForSvd(gpu, w, 40, 31), SvdError);
    w[7 * 30 + 3] = NaN;
    const bad = uploadForSvd(gpu, w, 40, 30);
    await assert.rejects(() => gpuRandomizedSvd(gpu, bad, 4), /non-finite/);
  } finally {
    gpu.close();
  }
});

Deno.test("gpu randomized svd at 4096x14336 (Llama-3-8B MLP, f32 over the binding limit): orthonormal, on the top subspace, as the host path", async () => {
  const gpu = await Gpu.open();
  try {
    const [m, n, rank] = [4096, 14336, 16];
    const spectrum = Array.from({ length: 64 }, (_, i) => 0.9 ** i);
    const t = knownSpectrumMatrix(m, n, spectrum, seed, true);
    const W = uploadForSvd(gpu, t.W as Float32Array, m, n);
    // 235 MB of f32: split wherever the device's binding limit is under it (lavapipe: 128 MiB).
    const whole = m * n * 4 <= gpu.limits.maxStorageBufferBindingSize;
    assert.equal(W.parts.length > 1, !whole, `${W.parts.length} blocks`);
    const r = await gpuRandomizedSvd(gpu, W, rank, { niter: 4, seed: seed + 1 });
    for (const p of W.parts) gpu.release(p);
    const truth = svdAgreement(r, t);
    const msg = `seed ${seed}: vs the known factors ${JSON.stringify(truth)}`;
    assert.ok(truth.orthonormality < 1e-12, msg);
    assert.ok(truth.singularValueError < 1e-5, msg);
    assert.ok(Math.max(truth.leftAngle, truth.rightAngle) < 1e-3, msg);
    const host = randomizedSvd(t.W, m, n, rank, { niter: 4, seed: seed + 1 });
    const vsHost = svdAgreement(r, asKnown(host));
    const msgHost = `seed ${seed}: vs the host path ${JSON.stringify(vsHost)}`;
    assert.ok(vsHost.singularValueError < 1e-5, msgHost);
    assert.ok(Math.max(vsHost.leftAngle, vsHost.rightAngle) < 1e-3, msgHost);
  } finally {
    gpu.close();
  }
});

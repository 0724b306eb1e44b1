import assert from "node:assert/strict";
import type { HostTensor } from "../model/safetensors.ts";
import {
  AdapterInitError,
  hdPissaSlices,
  loraInit,
  pissaInit,
} from "../train/methods/adapter_init.ts";
import { Rng } from "../core/rng.ts";
import { svd } from "../train/linalg/svd.ts";

function randomWeight(rng: Rng, out: number, inDim: number): HostTensor {
  return { shape: [out, inDim], data: rng.normals(out * inDim, 0.2) };
}

/** s·B·A in float64 from the f32 factors, [out, in]. */
function product(
  B: Float32Array,
  A: Float32Array,
  out: number,
  inDim: number,
  r: number,
  s: number,
) {
  const P = new Float64Array(out * inDim);
  for (let o = 0; o < out; o++) {
    for (let c = 0; c < inDim; c++) {
      let acc = 0;
      for (let j = 0; j < r; j++) acc += B[o * r + j] * A[j * inDim + c];
      P[o * inDim + c] = s * acc;
    }
  }
  return P;
}

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** Xᵀ Y for X [rows, p], Y [rows, q] (columns), or X Yᵀ for rows given as [p, cols]. */
function gram(
  X: Float32Array,
  Y: Float32Array,
  p: number,
  q: number,
  len: number,
  asRows: boolean,
) {
  const G = new Float64Array(p * q);
  for (let a = 0; a < p; a++) {
    for (let b = 0; b < q; b++) {
      let acc = 0;
      for (let i = 0; i < len; i++) {
        acc += asRows ? X[a * len + i] * Y[b * len + i] : X[i * p + a] * Y[i * q + b];
      }
      G[a * q + b] = acc;
    }
  }
  return G;
}

for (const [out, inDim] of [[24, 40], [40, 24]]) {
  Deno.test(`hd-pissa slices of a ${out}x${inDim} weight: products, orthogonality, order`, () => {
    const rng = new Rng(out * 1000 + inDim);
    const W = randomWeight(rng, out, inDim);
    const K = 3, r = 4;
    const exact = svd(W.data, out, inDim);
    for (const alpha of [r, 2 * r, 1]) {
      const s = alpha / r;
      const slices = hdPissaSlices(W, K, r, alpha, { name: "w" });
      assert.equal(slices.length, K);
      const norms: number[] = [];
      for (let k = 0; k < K; k++) {
        const { A, B } = slices[k];
        assert.equal(A.length, r * inDim);
        assert.equal(B.length, out * r);
        // s·B_k A_k = U_i S_i V_iᵀ over the slice's components.
        const want = new Float64Array(out * inDim);
        for (let i = k * r; i < (k + 1) * r; i++) {
          for (let o = 0; o < out; o++) {
            for (let c = 0; c < inDim; c++) {
              want[o * inDim + c] += exact.U[o * exact.k + i] * exact.S[i] *
                exact.Vt[i * inDim + c];
            }
          }
        }
        const got = product(B, A, out, inDim, r, s);
        assert.ok(relErr(got, want) < 1e-6, `alpha ${alpha} slice ${k}: ${relErr(got, want)}`);
        // A_k A_kᵀ = B_kᵀ B_k = diag(S_i / s).
        const AA = gram(A, A, r, r, inDim, true);
        const BB = gram(B, B, r, r, out, false);
        for (let a = 0; a < r; a++) {
          for (let b = 0; b < r; b++) {
            const d = a === b ? exact.S[k * r + a] / s : 0;
            assert.ok(Math.abs(AA[a * r + b] - d) < 1e-5 * exact.S[0], `A_k A_kᵀ[${a},${b}]`);
            assert.ok(Math.abs(BB[a * r + b] - d) < 1e-5 * exact.S[0], `B_kᵀ B_k[${a},${b}]`);
          }
        }
        let nrm = 0;
        for (const x of got) nrm += x * x;
        norms.push(nrm);
      }
      // Slices are mutually orthogonal: A_j A_kᵀ = 0 and B_jᵀ B_k = 0 for j ≠ k.
      for (let j = 0; j < K; j++) {
        for (let k = 0; k < K; k++) {
          if (j === k) continue;
          const AA = gram(slices[j].A, slices[k].A, r, r, inDim, true);
          const BB = gram(slices[j].B, slices[k].B, r, r, out, false);
          const worst = Math.max(...AA.map(Math.abs), ...BB.map(Math.abs));
          assert.ok(worst < 1e-5 * exact.S[0] / s, `slices ${j},${k} overlap ${worst}`);
        }
      }
      // Earlier slices hold larger singular values.
      for (let k = 1; k < K; k++) assert.ok(norms[k] < norms[k - 1]);
    }
  });
}

Deno.test("hd-pissa: K·r = min(out, in) slices add back up to W (Eckart–Young remainder 0)", () => {
  const rng = new Rng(17);
  const out = 12, inDim = 18, K = 4, r = 3;
  const W = randomWeight(rng, out, inDim);
  const slices = hdPissaSlices(W, K, r, 2 * r);
  const sum = new Float64Array(out * inDim);
  for (const { A, B } of slices) {
    const p = product(B, A, out, inDim, r, 2);
    for (let i = 0; i < sum.length; i++) sum[i] += p[i];
  }
  assert.ok(relErr(sum, W.data) < 1e-6, `reconstruction ${relErr(sum, W.data)}`);
  // With fewer slices the remainder is the tail of the spectrum.
  const two = hdPissaSlices(W, 2, r, r);
  const S = svd(W.data, out, inDim).S;
  const rest = Float64Array.from(W.data);
  for (const { A, B } of two) {
    const p = product(B, A, out, inDim, r, 1);
    for (let i = 0; i < rest.length; i++) rest[i] -= p[i];
  }
  let restNorm = 0;
  for (const x of rest) restNorm += x * x;
  let tail = 0;
  for (let i = 2 * r; i < S.length; i++) tail += S[i] ** 2;
  assert.ok(Math.abs(restNorm - tail) < 1e-5 * tail, `‖W − Σ‖² ${restNorm} vs tail ${tail}`);
});

Deno.test("hd-pissa: K·r above the matrix rank is an AdapterInitError naming the matrix", () => {
  const rng = new Rng(1);
  const W = randomWeight(rng, 16, 48);
  const name = "model.layers.0.self_attn.k_proj.weight";
  assert.throws(
    () => hdPissaSlices(W, 4, 5, 5, { name }),
    (e: unknown) => {
      assert.ok(e instanceof AdapterInitError);
      assert.equal(e.matrix, name);
      assert.match(e.message, /k_proj/);
      assert.match(e.message, /20/);
      return true;
    },
  );
  assert.equal(hdPissaSlices(W, 4, 4, 4).length, 4); // exactly 16 is fine
  assert.throws(() => hdPissaSlices(W, 0, 4, 4), AdapterInitError);
  assert.throws(() => hdPissaSlices(W, 2, 2.5, 4), AdapterInitError);
  assert.throws(() => hdPissaSlices(W, 2, 2, 0), AdapterInitError);
  assert.throws(() => hdPissaSlices({ shape: [16, 40], data: W.data }, 2, 2, 2), AdapterInitError);
  const bad = { shape: [16, 48], data: Float32Array.from(W.data) };
  bad.data[7] = NaN;
  assert.throws(() => hdPissaSlices(bad, 2, 2, 2, { name }), AdapterInitError);
});

Deno.test("hd-pissa with the randomized SVD agrees with the exact slices", () => {
  const rng = new Rng(23);
  const out = 60, inDim = 50, K = 2, r = 3;
  // A decaying spectrum, where a few power iterations recover the leading components.
  const base = svd(rng.normals(out * inDim), out, inDim);
  const data = new Float32Array(out * inDim);
  for (let i = 0; i < base.k; i++) {
    const sigma = 3 * 0.6 ** i;
    for (let o = 0; o < out; o++) {
      for (let c = 0; c < inDim; c++) {
        data[o * inDim + c] += base.U[o * base.k + i] * sigma * base.Vt[i * inDim + c];
      }
    }
  }
  const W = { shape: [out, inDim], data };
  const exact = hdPissaSlices(W, K, r, r);
  const rand = hdPissaSlices(W, K, r, r, { svd: { method: "randomized", niter: 5, seed: 9 } });
  const again = hdPissaSlices(W, K, r, r, { svd: { method: "randomized", niter: 5, seed: 9 } });
  assert.deepEqual(rand, again, "deterministic for a seed");
  for (let k = 0; k < K; k++) {
    const pe = product(exact[k].B, exact[k].A, out, inDim, r, 1);
    const pr = product(rand[k].B, rand[k].A, out, inDim, r, 1);
    assert.ok(relErr(pr, pe) < 1e-5, `slice ${k}: ${relErr(pr, pe)}`);
  }
});

Deno.test("pissa: the top-r slice and W_res + s·B·A = W", () => {
  const rng = new Rng(5);
  const out = 20, inDim = 30, r = 4, alpha = 8;
  const W = randomWeight(rng, out, inDim);
  const p = pissaInit(W, r, alpha, { name: "w" });
  const [first] = hdPissaSlices(W, 3, r, alpha);
  assert.deepEqual(p.A, first.A);
  assert.deepEqual(p.B, first.B);
  const back = product(p.B, p.A, out, inDim, r, alpha / r);
  let worst = 0;
  for (let i = 0; i < back.length; i++) {
    worst = Math.max(worst, Math.abs(p.residual[i] + back[i] - W.data[i]));
  }
  assert.ok(worst < 1e-6, `W_res + s·BA − W: ${worst}`);
  // The residual has lost the top r singular values.
  const S = svd(W.data, out, inDim).S;
  const Sres = svd(p.residual, out, inDim).S;
  assert.ok(
    Math.abs(Sres[0] - S[r]) < 1e-5 * S[0],
    `σ_1(W_res) ${Sres[0]} vs σ_${r + 1}(W) ${S[r]}`,
  );
});

Deno.test("lora: A Kaiming-uniform(a=√5) within ±1/√in, B = 0, seeded", () => {
  const out = 32, inDim = 64, r = 8;
  const { A, B } = loraInit([out, inDim], r, new Rng(42));
  assert.equal(A.length, r * inDim);
  assert.equal(B.length, out * r);
  assert.ok(B.every((x) => x === 0));
  const bound = 1 / Math.sqrt(inDim);
  assert.ok(A.every((x) => Math.abs(x) <= bound));
  let mean = 0;
  let sq = 0;
  let max = 0;
  for (const x of A) {
    mean += x / A.length;
    sq += (x * x) / A.length;
    max = Math.max(max, Math.abs(x));
  }
  // Uniform(−b, b): mean 0, E[x²] = b²/3 (512 samples: loose statistical bounds).
  assert.ok(Math.abs(mean) < 0.15 * bound, `mean ${mean}`);
  assert.ok(Math.abs(sq / (bound * bound / 3) - 1) < 0.2, `second moment ${sq}`);
  assert.ok(max > 0.9 * bound, "samples fill the interval");
  assert.deepEqual(loraInit([out, inDim], r, new Rng(42)).A, A);
  assert.notDeepEqual(loraInit([out, inDim], r, new Rng(43)).A, A);
  assert.throws(() => loraInit([out, 0], r, new Rng(1)), AdapterInitError);
});

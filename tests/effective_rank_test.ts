import assert from "node:assert/strict";
import type { HostTensor } from "../model/safetensors.ts";
import {
  effectiveRank,
  EffectiveRankError,
  energyRank,
  rankAbove,
} from "../train/report/effective_rank.ts";
import { Rng } from "../core/rng.ts";
import { orthonormalColumns } from "../train/linalg/svd.ts";

/** W_initial random, W_final = W_initial + U diag(s) Vᵀ (rounded to f32). */
function pair(rng: Rng, m: number, n: number, s: number[]): [HostTensor, HostTensor] {
  const k = s.length;
  const U = orthonormalColumns(rng.normals(m * k), m, k);
  const V = orthonormalColumns(rng.normals(n * k), n, k);
  const initial = rng.normals(m * n, 0.5);
  const final = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let d = 0;
      for (let c = 0; c < k; c++) d += U[i * k + c] * s[c] * V[j * k + c];
      final[i * n + j] = initial[i * n + j] + d;
    }
  }
  return [{ shape: [m, n], data: final }, { shape: [m, n], data: initial }];
}

Deno.test("effective rank of a change of known rank and spectrum", () => {
  const rng = new Rng(10);
  // Rank 5 above 1e-2·σ_1, plus two components below the threshold.
  const s = [3, 2, 1, 0.5, 0.2, 0.02, 0.01];
  const [final, initial] = pair(rng, 30, 24, s);
  const r = effectiveRank(final, initial, "w");
  assert.equal(r["rank_1e-2"], 5);
  // σ² = 9, 4, 1, 0.25, ...: total ≈ 14.29; 90% ≈ 12.86 is first reached with two components.
  assert.equal(r.energy90, 2);
  assert.equal(r.spectrum.length, 24);
  for (let i = 0; i < s.length; i++) {
    assert.ok(Math.abs(r.spectrum[i] - s[i]) < 1e-5, `σ_${i} ${r.spectrum[i]} vs ${s[i]}`);
  }
  // The rest is f32 rounding of W_final only.
  assert.ok(r.spectrum[s.length] < 1e-5);
  for (let i = 1; i < r.spectrum.length; i++) assert.ok(r.spectrum[i] <= r.spectrum[i - 1]);
});

Deno.test("effective rank: summaries of given spectra", () => {
  assert.equal(rankAbove([10, 5, 0.11, 0.1, 0.05]), 3); // 0.1 is not > 0.1
  assert.equal(rankAbove([0, 0, 0]), 0);
  assert.equal(rankAbove([]), 0);
  assert.equal(energyRank([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]), 9); // exactly 90% with 9
  assert.equal(energyRank([3, 1]), 1); // 9 / 10
  assert.equal(energyRank([2, 1]), 2); // 4 / 5 < 0.9
  assert.equal(energyRank([0, 0]), 0);
  assert.equal(energyRank([5, 4, 3], 0.5), 1);
});

Deno.test("effective rank of an HD-PiSSA-shaped update is 2·K·r, of a LoRA-shaped one r", () => {
  const rng = new Rng(3);
  const m = 28, n = 20, K = 3, r = 2;
  const initial = rng.normals(m * n, 0.5);
  const hd = Float32Array.from(initial);
  const lora = Float32Array.from(initial);
  // Σ_k (ΔB_k A_k + B_k ΔA_k) with random factors: generic rank 2·K·r.
  for (let k = 0; k < K; k++) {
    const A = rng.normals(r * n), B = rng.normals(m * r);
    const dA = rng.normals(r * n), dB = rng.normals(m * r);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let d = 0;
        for (let c = 0; c < r; c++) {
          d += dB[i * r + c] * A[c * n + j] + B[i * r + c] * dA[c * n + j];
        }
        hd[i * n + j] += 0.05 * d;
      }
    }
  }
  const B = rng.normals(m * r), A = rng.normals(r * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let d = 0;
      for (let c = 0; c < r; c++) d += B[i * r + c] * A[c * n + j];
      lora[i * n + j] += 0.05 * d;
    }
  }
  const w0 = { shape: [m, n], data: initial };
  assert.equal(effectiveRank({ shape: [m, n], data: hd }, w0)["rank_1e-2"], 2 * K * r);
  assert.equal(effectiveRank({ shape: [m, n], data: lora }, w0)["rank_1e-2"], r);
});

Deno.test("effective rank: no change gives zeros; mismatched shapes are an error", () => {
  const rng = new Rng(4);
  const w = { shape: [6, 5], data: rng.normals(30) };
  const same = effectiveRank(w, { shape: [6, 5], data: Float32Array.from(w.data) });
  assert.deepEqual([same["rank_1e-2"], same.energy90], [0, 0]);
  assert.ok(same.spectrum.every((x) => x === 0));
  assert.throws(
    () => effectiveRank(w, { shape: [5, 6], data: w.data }, "model.norm"),
    (e: unknown) => e instanceof EffectiveRankError && /model\.norm/.test(e.message),
  );
  assert.throws(() => effectiveRank({ shape: [30], data: w.data }, w), EffectiveRankError);
});

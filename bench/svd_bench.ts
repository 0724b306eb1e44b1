/**
 * SVD timings on the CPU (float64): the exact SVD used for matrices up to 1024 on the long side,
 * and the randomized SVD (Halko et al., with power iterations) used above that, at the Llama-3-8B
 * shapes (4096×4096 attention, 4096×14336 MLP) on float32 weights with a known decaying spectrum
 * (σ_i = 0.95^i, 256 components), so that its orthonormality and its agreement with the true top
 * subspace are measured too. The big shapes run on one thread and on the worker pool
 * (`svd_pool.ts`, one thread per core), interleaved, with a check that both give the same bits.
 */
import type { Report } from "./figure.ts";
import { randomizedSvd, svd } from "../train/linalg/svd.ts";
import { knownSpectrumMatrix, svdAgreement } from "../train/linalg/svd_check.ts";
import { SvdPool } from "../train/linalg/svd_pool.ts";
import { Rng } from "../core/rng.ts";

function randomMatrix(m: number, n: number, seed: number): Float64Array {
  const rng = new Rng(seed);
  const a = new Float64Array(m * n);
  for (let i = 0; i < a.length; i++) a[i] = rng.normal();
  return a;
}

function time(f: () => void, reps: number): number {
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    f();
    best = Math.min(best, performance.now() - t0);
  }
  return best;
}

export async function run(report: Report): Promise<void> {
  for (const [m, n] of [[128, 128], [344, 128], [512, 512]]) {
    const a = randomMatrix(m, n, m + n);
    report({ name: `exact SVD ${m}x${n}`, value: time(() => svd(a, m, n), 3), unit: "ms" });
  }
  const big = randomMatrix(1024, 1024, 7);
  for (const [rank, niter] of [[16, 2], [16, 4], [64, 4]]) {
    report({
      name: `randomized SVD 1024x1024, rank ${rank}, niter ${niter}`,
      value: time(() => randomizedSvd(big, 1024, 1024, rank, { niter, seed: 1 }), 2),
      unit: "ms",
    });
  }
  const spectrum = Array.from({ length: 256 }, (_, i) => 0.95 ** i);
  // The pool's threads are created once (their start is not timed) and ended at the end.
  using pool = new SvdPool();
  report({
    name: "SVD pool threads (navigator.hardwareConcurrency)",
    value: pool.threads,
    unit: "",
  });
  for (const [m, n] of [[4096, 4096], [4096, 14336]]) {
    const truth = knownSpectrumMatrix(m, n, spectrum, m + n, true);
    for (const [rank, niter] of [[16, 4], [64, 4]]) {
      const label = `randomized SVD ${m}x${n} f32, rank ${rank}, niter ${niter}`;
      // One thread and the pool one right after the other, so that a load from elsewhere on
      // the machine perturbs both alike.
      let t0 = performance.now();
      const one = randomizedSvd(truth.W, m, n, rank, { niter, seed: 1 });
      const msOne = performance.now() - t0;
      t0 = performance.now();
      const r = await pool.randomizedSvd(truth.W, m, n, rank, { niter, seed: 1 });
      const msPool = performance.now() - t0;
      report({ name: `${label}: 1 thread`, value: msOne, unit: "ms" });
      report({ name: `${label}: pool of ${pool.threads}`, value: msPool, unit: "ms" });
      report({ name: `${label}: speedup`, value: msOne / msPool, unit: "x" });
      const same = (["U", "S", "Vt"] as const).every((k) =>
        r[k].every((v, i) => Object.is(v, one[k][i]))
      );
      report({
        name: `${label}: pool bits = 1-thread bits`,
        value: same ? 1 : 0,
        unit: "(1 = yes)",
      });
      const a = svdAgreement(r, truth);
      report({ name: `${label}: ‖QᵀQ − I‖∞`, value: a.orthonormality, unit: "" });
      report({ name: `${label}: max rel. error of top σ`, value: a.singularValueError, unit: "" });
      report({
        name: `${label}: sin of largest principal angle (left, right)`,
        value: Math.max(a.leftAngle, a.rightAngle),
        unit: "",
      });
    }
  }
}

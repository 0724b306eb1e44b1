/**
 * SVD timings on the CPU (float64): the exact SVD used for matrices up to 1024 on the long side,
 * and the randomized SVD (Halko et al., with power iterations) used above that.
 */
import type { Report } from "./figure.ts";
import { randomizedSvd, svd } from "../train/linalg/svd.ts";
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

export function run(report: Report): void {
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
}

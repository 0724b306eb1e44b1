/**
 * The study's statistics: mean ± sample standard deviation over seeds, and paired differences
 * (same seed, so same data order and init stream) with percentile-bootstrap intervals drawn from
 * a seeded generator, so that study.json is the same every time it is rebuilt.
 * @module
 */
import { Rng } from "../../core/rng.ts";
import { StudyError } from "./errors.ts";

/** Mean and sample standard deviation (n − 1); `sd` is null with fewer than two values. */
export interface Summary {
  n: number;
  mean: number;
  sd: number | null;
}

export function summarize(xs: readonly number[]): Summary {
  if (xs.length === 0) throw new StudyError("summarize: no values");
  if (!xs.every(Number.isFinite)) throw new StudyError(`summarize: non-finite value in [${xs}]`);
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  if (xs.length < 2) return { n: xs.length, mean, sd: null };
  const ss = xs.reduce((a, x) => a + (x - mean) * (x - mean), 0);
  return { n: xs.length, mean, sd: Math.sqrt(ss / (xs.length - 1)) };
}

/**
 * The q-quantile of sorted values with linear interpolation between order statistics (R's
 * type 7, numpy's default): position (n − 1)·q.
 */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) throw new StudyError("quantile: no values");
  if (!(q >= 0 && q <= 1)) throw new StudyError(`quantile: q must lie in [0, 1], got ${q}`);
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (pos - lo) * (sorted[hi] - sorted[lo]);
}

/** A paired difference a − b over the seeds both have, with its bootstrap interval. */
export interface PairedDifference {
  /** Seeds present in both, ascending. */
  seeds: number[];
  /** a − b per seed, in `seeds` order. */
  diffs: number[];
  mean: number;
  /** Percentile-bootstrap interval of the mean difference. */
  lo: number;
  hi: number;
  level: number;
  resamples: number;
}

export interface BootstrapOptions {
  /** Interval coverage (default 0.95). */
  level?: number;
  /** Resamples (default 10 000). */
  resamples?: number;
  /** Generator seed (default 1). */
  seed?: number;
}

/** Percentile-bootstrap interval of the mean of `xs` (resampling with replacement). */
export function bootstrapMean(
  xs: readonly number[],
  o: BootstrapOptions = {},
): { mean: number; lo: number; hi: number } {
  const level = o.level ?? 0.95, resamples = o.resamples ?? 10_000;
  if (xs.length === 0) throw new StudyError("bootstrap: no values");
  if (!(level > 0 && level < 1)) throw new StudyError(`bootstrap: level ${level} not in (0, 1)`);
  if (!(Number.isInteger(resamples) && resamples >= 1)) {
    throw new StudyError(`bootstrap: resamples must be a positive integer, got ${resamples}`);
  }
  const rng = new Rng(o.seed ?? 1);
  const means = new Float64Array(resamples);
  for (let b = 0; b < resamples; b++) {
    let s = 0;
    for (let i = 0; i < xs.length; i++) s += xs[rng.int(xs.length)];
    means[b] = s / xs.length;
  }
  means.sort();
  const sorted = Array.from(means);
  const tail = (1 - level) / 2;
  return { mean: summarize(xs).mean, lo: quantile(sorted, tail), hi: quantile(sorted, 1 - tail) };
}

/**
 * a − b paired by seed. Only seeds present in both count; none in common is an error (there is
 * nothing to compare, and a silent empty result would read as "no difference").
 */
export function pairedDifference(
  a: ReadonlyMap<number, number>,
  b: ReadonlyMap<number, number>,
  o: BootstrapOptions = {},
): PairedDifference {
  const seeds = [...a.keys()].filter((s) => b.has(s)).sort((x, y) => x - y);
  if (seeds.length === 0) throw new StudyError("paired difference: no seed in common");
  const diffs = seeds.map((s) => a.get(s)! - b.get(s)!);
  const { mean, lo, hi } = bootstrapMean(diffs, o);
  return {
    seeds,
    diffs,
    mean,
    lo,
    hi,
    level: o.level ?? 0.95,
    resamples: o.resamples ?? 10_000,
  };
}

/**
 * The randomized SVDs of a method's init, computed ahead on a pool of threads (`SvdPool`): as
 * long as there is a matrix for every thread, one matrix per thread (nothing stays serial on the
 * main thread); the last matrices one at a time, each split over every thread. Either way the
 * results have the same bits as the SVDs the init's walk would compute itself (same seed per
 * matrix, same step sequence), so the walk takes them as they are (`InitOptions.svds`) and the
 * factors do not depend on the number of threads.
 * @module
 */
import { adaptableLinears, type LlamaConfig } from "../../model/config.ts";
import type { HostTensor } from "../../model/safetensors.ts";
import { SvdError, type SvdResult } from "../linalg/svd.ts";
import type { SvdPool } from "../linalg/svd_pool.ts";
import { AdapterInitError } from "./adapter_init.ts";
import { type InitOptions, svdOptions } from "./init.ts";

/** One SVD done: its matrix, the count so far and the time it took. */
export interface SvdAheadProgress {
  matrix: string;
  done: number;
  total: number;
  ms: number;
}

/** The adapted weights whose SVD is randomized under `o` (the others are exact, in the walk). */
export function randomizedSvdMatrices(config: LlamaConfig, o: InitOptions): string[] {
  return adaptableLinears(config, o.targets)
    .filter((l, i) => svdOptions(o, l.shape, i).method === "randomized")
    .map((l) => l.name);
}

/** One randomized SVD of an init: the weight, and the settings its walk would use. */
export interface SvdRequest {
  name: string;
  shape: readonly number[];
  niter: number;
  seed: number;
}

/**
 * The randomized SVDs of an init under `o`, in model order, with the settings the walk gives
 * each (so that SVDs computed elsewhere with them can stand in for the walk's).
 */
export function randomizedSvdRequests(config: LlamaConfig, o: InitOptions): SvdRequest[] {
  return adaptableLinears(config, o.targets).flatMap((l, i) => {
    const svd = svdOptions(o, l.shape, i);
    if (svd.method !== "randomized") return [];
    return [{ name: l.name, shape: l.shape, niter: svd.niter ?? 4, seed: svd.seed ?? 0 }];
  });
}

/**
 * The top `components` singular triplets of every adapted weight whose SVD is randomized, by
 * name, computed on `pool`. A weight that cannot be decomposed (non-finite entries, too small
 * for `components`) is an AdapterInitError naming it.
 */
export async function randomizedSvdsAhead(
  config: LlamaConfig,
  weights: ReadonlyMap<string, HostTensor>,
  o: InitOptions,
  components: number,
  pool: SvdPool,
  onProgress?: (p: SvdAheadProgress) => void,
): Promise<Map<string, SvdResult>> {
  const linears = adaptableLinears(config, o.targets);
  const chosen = linears.flatMap((l, i) => {
    const svd = svdOptions(o, l.shape, i);
    return svd.method === "randomized" ? [{ l, svd }] : [];
  });
  const results = new Array<SvdResult>(chosen.length);
  let done = 0;
  const one = async (i: number, whole: boolean) => {
    const { l, svd } = chosen[i];
    const W = weights.get(l.name);
    if (!W) throw new AdapterInitError(`the base weights have no "${l.name}"`, l.name);
    const [rows, cols] = W.shape;
    const t0 = performance.now();
    try {
      results[i] = whole
        ? await pool.randomizedSvdOnOneThread(W.data, rows, cols, components, svd)
        : await pool.randomizedSvd(W.data, rows, cols, components, svd);
    } catch (e) {
      if (!(e instanceof SvdError)) throw e;
      throw new AdapterInitError(`"${l.name}": ${e.message}`, l.name);
    }
    onProgress?.({
      matrix: l.name,
      done: ++done,
      total: chosen.length,
      ms: performance.now() - t0,
    });
  };
  // `threads` loops each take the next matrix when theirs is done: at most one matrix (and one
  // copy of a weight in shared memory) per thread at a time.
  const wholeCount = chosen.length - (chosen.length % pool.threads);
  let next = 0;
  let failed = false;
  await Promise.all(
    Array.from({ length: Math.min(pool.threads, wholeCount) }, async () => {
      try {
        while (next < wholeCount && !failed) await one(next++, true);
      } catch (e) {
        // The other loops start no further matrix.
        failed = true;
        throw e;
      }
    }),
  );
  for (let i = wholeCount; i < chosen.length; i++) await one(i, false);
  return new Map(chosen.map(({ l }, i) => [l.name, results[i]]));
}

/**
 * The initial adapters of a method, computed once (by the driver) and sent to every worker:
 * separate SVDs on each worker could differ in sign or rotation and make the workers' W drift
 * apart (docs/architecture.md §2). Each method supplies the factors of one matrix; the walk over the adapted
 * weights, the SVD choice and the shared random stream are here.
 * @module
 */
import {
  adaptableLinears,
  type LinearKind,
  type LinearSpec,
  type LlamaConfig,
} from "../../model/config.ts";
import type { HostTensor } from "../../model/safetensors.ts";
import type { AdapterFactors } from "./adapter_init.ts";
import { Rng } from "../../core/rng.ts";
import type { SvdResult, TopSvdOptions } from "../linalg/svd.ts";

export interface InitOptions {
  workers: number;
  rank: number;
  alpha: number;
  targets: readonly LinearKind[];
  svd: "auto" | "exact" | "randomized";
  svdNiter: number;
  seed: number;
  /**
   * The randomized SVDs of the adapted weights by name, computed ahead on several threads
   * (`init_svd.ts`); a matrix without one gets its SVD computed in the walk.
   */
  svds?: ReadonlyMap<string, SvdResult>;
}

/** The init options a run's settings give (one place, so the job and its checks agree). */
export function initOptionsOf(
  o: Pick<InitOptions, "workers" | "rank" | "alpha" | "targets" | "svd" | "svdNiter" | "seed">,
): InitOptions {
  const { workers, rank, alpha, targets, svd, svdNiter, seed } = o;
  return { workers, rank, alpha, targets, svd, svdNiter, seed };
}

/** Per adapted weight: HD-PiSSA's K slices, or the one shared adapter of LoRA/PiSSA. */
export interface MethodInit {
  factors: Map<string, AdapterFactors[]>;
  /** PiSSA: the residual weights W − s·B·A that replace W. */
  residuals: Map<string, Float32Array>;
}

/** An init without adapters (full fine-tuning). */
export function emptyInit(): MethodInit {
  return { factors: new Map(), residuals: new Map() };
}

/** The exact SVD up to this size on the long side; the randomized one above it (auto). */
export const EXACT_SVD_MAX = 1024;

export function svdOptions(
  o: InitOptions,
  shape: readonly number[],
  salt: number,
): TopSvdOptions {
  const exact = o.svd === "exact" || (o.svd === "auto" && Math.max(...shape) <= EXACT_SVD_MAX);
  return exact
    ? { method: "exact" }
    : { method: "randomized", niter: o.svdNiter, seed: o.seed + salt };
}

/** What a method's init sees of one adapted weight. */
export interface MatrixInit {
  linear: LinearSpec;
  /** The base weight `[out, in]`. */
  W: HostTensor;
  /** The SVD to use for this matrix (exact or randomized, seeded per matrix). */
  svd: TopSvdOptions;
  /** One generator for the whole walk, in model order (seeded with `seed`). */
  rng: Rng;
}

/** The factors of one matrix, and its residual weight when the method replaces W. */
export interface MatrixFactors {
  factors: AdapterFactors[];
  residual?: Float32Array;
}

/**
 * Walks the adapted weights in model order and collects what `perMatrix` makes of each. The
 * random generator is shared by the whole walk, so that every worker could redo it identically.
 */
export function initEachAdapted(
  config: LlamaConfig,
  weights: ReadonlyMap<string, HostTensor>,
  o: InitOptions,
  perMatrix: (m: MatrixInit) => MatrixFactors,
  onProgress?: (done: number, total: number) => void,
): MethodInit {
  const init = emptyInit();
  const linears = adaptableLinears(config, o.targets);
  const rng = new Rng(o.seed);
  linears.forEach((l, i) => {
    const W = weights.get(l.name)!;
    const svd = svdOptions(o, l.shape, i);
    const ahead = svd.method === "randomized" ? o.svds?.get(l.name) : undefined;
    const made = perMatrix({
      linear: l,
      W,
      svd: ahead ? { ...svd, precomputed: ahead } : svd,
      rng,
    });
    init.factors.set(l.name, made.factors);
    if (made.residual) init.residuals.set(l.name, made.residual);
    onProgress?.(i + 1, linears.length);
  });
  return init;
}

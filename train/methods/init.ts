/**
 * The initial adapters of each method, computed once (by the driver) and sent to every worker:
 * separate SVDs on each worker could differ in sign or rotation and make the workers' W drift
 * apart (docs/architecture.md §2).
 * @module
 */
import { adaptableLinears, type LinearKind, type LlamaConfig } from "../../model/config.ts";
import type { HostTensor } from "../../model/safetensors.ts";
import { type AdapterFactors, hdPissaSlices, loraInit, pissaInit } from "./adapter_init.ts";
import { Rng } from "../rng.ts";
import type { TopSvdOptions } from "../linalg/svd.ts";
import type { Method } from "../cli/options.ts";

export interface InitOptions {
  method: Method;
  workers: number;
  rank: number;
  alpha: number;
  targets: readonly LinearKind[];
  svd: "auto" | "exact" | "randomized";
  svdNiter: number;
  seed: number;
}

/** Per adapted weight: HD-PiSSA's K slices, or the one shared adapter of LoRA/PiSSA. */
export interface MethodInit {
  factors: Map<string, AdapterFactors[]>;
  /** PiSSA: the residual weights W − s·B·A that replace W. */
  residuals: Map<string, Float32Array>;
}

/** The exact SVD up to this size on the long side; the randomized one above it (auto). */
export const EXACT_SVD_MAX = 1024;

function svdOptions(o: InitOptions, shape: readonly number[], salt: number): TopSvdOptions {
  const exact = o.svd === "exact" || (o.svd === "auto" && Math.max(...shape) <= EXACT_SVD_MAX);
  return exact
    ? { method: "exact" }
    : { method: "randomized", niter: o.svdNiter, seed: o.seed + salt };
}

/** Computes every method's initial adapters from the base weights (nothing for `full`). */
export function methodInit(
  config: LlamaConfig,
  weights: ReadonlyMap<string, HostTensor>,
  o: InitOptions,
  onProgress?: (done: number, total: number) => void,
): MethodInit {
  const factors = new Map<string, AdapterFactors[]>();
  const residuals = new Map<string, Float32Array>();
  if (o.method === "full") return { factors, residuals };
  const linears = adaptableLinears(config, o.targets);
  // LoRA draws A from one generator in model order, so every worker could redo it identically.
  const rng = new Rng(o.seed);
  linears.forEach((l, i) => {
    const W = weights.get(l.name)!;
    const svd = svdOptions(o, l.shape, i);
    if (o.method === "hd-pissa") {
      factors.set(l.name, hdPissaSlices(W, o.workers, o.rank, o.alpha, { name: l.name, svd }));
    } else if (o.method === "pissa") {
      const p = pissaInit(W, o.rank, o.alpha, { name: l.name, svd });
      factors.set(l.name, [{ A: p.A, B: p.B }]);
      residuals.set(l.name, p.residual);
    } else {
      factors.set(l.name, [loraInit(l.shape, o.rank, rng, l.name)]);
    }
    onProgress?.(i + 1, linears.length);
  });
  return { factors, residuals };
}

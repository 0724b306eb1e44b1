/**
 * The study's time budget: each run costs a fixed overhead (starting the workers, the SVD,
 * evaluating before and after, writing the model) plus its steps, a step's time growing with
 * the global batch. The defaults were measured on this project's 2-core CPU host with lavapipe
 * (a one-seed pass over codes, K = 4, batch 16, 2026-12-07: 38 runs, a mean of ~41 s per 60-step
 * run at batch 16 and ~106 s at batch 64); once runs have finished, their mean wall time is
 * reported next to the estimate.
 * @module
 */
import type { RunSpec } from "./plan.ts";
import type { RunResult } from "./schema.ts";

/** Seconds a step and a run's fixed part take. */
export interface BudgetModel {
  /** One optimizer step at the reference batch. */
  stepSeconds: number;
  /** Everything else of a run. */
  overheadSeconds: number;
  /** The global batch `stepSeconds` was measured at. */
  referenceBatch: number;
}

export const DEFAULT_BUDGET: BudgetModel = {
  stepSeconds: 0.47,
  overheadSeconds: 12,
  referenceBatch: 16,
};

/** The estimated seconds of one run of `steps` steps. */
export function runSeconds(r: Pick<RunSpec, "batchSize">, steps: number, m: BudgetModel): number {
  return m.overheadSeconds + steps * m.stepSeconds * (r.batchSize / m.referenceBatch);
}

/** The estimated seconds of all `runs`. */
export function totalSeconds(
  runs: readonly Pick<RunSpec, "batchSize">[],
  steps: number,
  m: BudgetModel,
): number {
  return runs.reduce((t, r) => t + runSeconds(r, steps, m), 0);
}

/** The mean wall time of finished runs, in seconds (null when none has finished). */
export function measuredMeanRunSeconds(results: readonly RunResult[]): number | null {
  if (results.length === 0) return null;
  return results.reduce((t, r) => t + r.wall_ms, 0) / results.length / 1000;
}

/** "2 h 05 min" / "7 min 30 s". */
export function formatDuration(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h > 0
    ? `${h} h ${String(m).padStart(2, "0")} min`
    : `${m} min ${String(r).padStart(2, "0")} s`;
}

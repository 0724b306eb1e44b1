/**
 * Learning-rate schedules (docs/architecture.md §2 "Schedule"): linear warmup over w = ceil(warmup_ratio · T)
 * steps for every schedule, then cosine, linear or constant.
 * @module
 */

import { DomainError } from "../../core/errors.ts";

export const SCHEDULES = ["cosine", "linear", "constant"] as const;
export type ScheduleName = typeof SCHEDULES[number];

/** An unknown schedule name or an impossible schedule setting. */
export class ScheduleError extends DomainError {
  static override readonly code: string = "SCHEDULE";
}

export interface ScheduleConfig {
  schedule: ScheduleName;
  /** Peak learning rate. */
  lr: number;
  /** Fraction of the T steps spent warming up, in [0, 1]. */
  warmupRatio: number;
  /** T, the number of steps of the run. */
  totalSteps: number;
}

/** `name` as a schedule, or a ScheduleError listing the known ones. */
export function parseSchedule(name: string): ScheduleName {
  if ((SCHEDULES as readonly string[]).includes(name)) return name as ScheduleName;
  throw new ScheduleError(
    `unknown schedule ${JSON.stringify(name)}; expected one of ${SCHEDULES.join(", ")}`,
  );
}

/**
 * w = ceil(warmup_ratio · T), computed in float64 as written (so 0.07 · 100 gives 8, as
 * PyTorch/transformers' `math.ceil(T * ratio)` does).
 */
export function warmupSteps(warmupRatio: number, totalSteps: number): number {
  checkConfig(warmupRatio, totalSteps);
  return Math.ceil(warmupRatio * totalSteps);
}

/** The learning rate of step t, for t in [0, T]. */
export function learningRate(t: number, cfg: ScheduleConfig): number {
  const schedule = parseSchedule(cfg.schedule);
  const T = cfg.totalSteps;
  const w = warmupSteps(cfg.warmupRatio, T);
  if (!Number.isFinite(cfg.lr) || cfg.lr < 0) {
    throw new ScheduleError(`lr must be a finite number >= 0, got ${cfg.lr}`);
  }
  if (!Number.isInteger(t) || t < 0 || t > T) {
    throw new ScheduleError(`step ${t} is outside [0, ${T}]`);
  }
  const lr0 = cfg.lr;
  if (t < w) return lr0 * t / w;
  const span = Math.max(1, T - w);
  switch (schedule) {
    case "cosine":
      return lr0 * 0.5 * (1 + Math.cos(Math.PI * (t - w) / span));
    case "linear":
      return lr0 * (T - t) / span;
    case "constant":
      return lr0;
  }
}

/** learningRate for every step 0..T−1. */
export function learningRates(cfg: ScheduleConfig): Float64Array {
  const out = new Float64Array(cfg.totalSteps);
  for (let t = 0; t < cfg.totalSteps; t++) out[t] = learningRate(t, cfg);
  return out;
}

function checkConfig(warmupRatio: number, totalSteps: number): void {
  if (!Number.isInteger(totalSteps) || totalSteps < 1) {
    throw new ScheduleError(`the number of steps must be an integer >= 1, got ${totalSteps}`);
  }
  if (!(warmupRatio >= 0 && warmupRatio <= 1)) {
    throw new ScheduleError(`warmup_ratio must be in [0, 1], got ${warmupRatio}`);
  }
}

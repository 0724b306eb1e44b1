/**
 * What the parts of the Driver share: the job's context (system, flags, method, log), the run's
 * state that the step loop and its parts advance, the step record and the driver's error.
 * @module
 */
import type { ActorHandle, System } from "../../runtime/mod.ts";
import type { FinetuneOptions } from "../../train/cli/options.ts";
import type { TrainingMethod } from "../../train/methods/method.ts";
import type { StepRecord } from "../../train/report/report.ts";
import type { GpuWorker } from "../gpu_worker.ts";
import type { ObjectRef } from "../messages.ts";
import { DomainError } from "../../core/errors.ts";
import { z } from "zod";

/** The run cannot go on: unequal W across workers, a bad contribution under `stop`, ... */
export class TrainingError extends DomainError {
  static override readonly code: string = "TRAINING";
}

/**
 * A worker lost with its node could not come back: no node had room for it (its GPU host is
 * gone and there is no spare), or it failed to restart. The run stops, its checkpoints kept;
 * `--resume` continues it once a host is back (docs/architecture.md §6, "Failures and rollback").
 */
export class WorkersUnavailableError extends TrainingError {
  static override readonly code: string = "WORKERS_UNAVAILABLE";
  static readonly fields = z.object({
    workers: z.array(z.number().int()),
    resources: z.record(z.string(), z.number()),
  });
  constructor(
    readonly workers: number[],
    readonly resources: Record<string, number>,
    why: string,
  ) {
    super(
      `${workers.length === 1 ? "worker" : "workers"} ${workers.join(", ")} (${
        workers.length === 1 ? "needs" : "each needs"
      } ${JSON.stringify(resources)}) cannot be placed again: ${why}; the checkpoints are kept: ` +
        `rerun with --resume once a host with the resources is back`,
    );
  }
}

/** A step as the driver reports it: the report's record plus the phase split. */
export interface DriverStep extends StepRecord {
  compute_ms: number;
  comm_ms: number;
  update_ms: number;
  /** Messages dropped by the gather (malformed, wrong schema, duplicates). */
  rejected: number;
  /** Set when the step's update was not applied (a non-finite contribution under `skip`). */
  skipped?: string;
}

export type Worker = ActorHandle<typeof GpuWorker>;

/** How long a call of the protocol may take (a step of a big model on a slow device). */
export const CALL_MS = 10 * 60_000;
/** Options of the protocol's calls: all of them are idempotent (docs/architecture.md §6). */
export const CALL = { timeoutMs: CALL_MS, idempotent: true } as const;

export const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** What every part of the driver reads: the job, its flags and method, and the log. */
export interface DriverContext {
  readonly system: System;
  readonly job: string;
  readonly o: FinetuneOptions;
  readonly method: TrainingMethod;
  /** `<namespace>.hd.<job>`: the prefix of the job's subjects. */
  readonly prefix: string;
  /** A line for the user (the CLI prints it above its progress bar). */
  log(line: string): void;
  /**
   * Publishes an application event of the run (`train.<what>`, with the job's name added) to the
   * system's processes, e.g. a dashboard (docs/architecture.md §6, "Events of a run").
   */
  emit(what: string, data: Record<string, unknown>): void;
}

/** An object the driver put, as the workers get it: its name and the digest `put` returned. */
export type StoredRef = z.infer<typeof ObjectRef>;

/** The run's position and counters: owned by the driver, advanced by its parts. */
export class RunState {
  generation = 0;
  /** The next step to run. */
  nextStep = 0;
  steps: DriverStep[] = [];
  /**
   * The current initial factors in the object store, with the digest their put returned (kept
   * for rollbacks); null before the init.
   */
  factors: StoredRef | null = null;
  /** Wall time of the adapter init (SVDs included), ms; null when the run resumed. */
  initMs: number | null = null;
  /** Where the init's randomized SVDs ran (`--svd-device`) and why; null when there were none. */
  svdDevice: { asked: string; used: "cpu" | "gpu"; reason: string } | null = null;
  recoveries = 0;
  /** Re-synchronisations of W from worker 0 (tolerant sync). */
  resyncs = 0;
  /** Messages refused on the job's subjects. */
  rejected = 0;
  /** Differences between workers that a tolerant re-sync repaired. */
  drift: SyncDrift[] = [];
  /** Workers whose loss was not finite, once per step and worker, in the order seen. */
  nonfiniteLosses: NonfiniteLoss[] = [];

  /** Records that worker `worker`'s loss of step `step` was not finite; false if known. */
  noteNonfiniteLoss(step: number, worker: number): boolean {
    if (this.nonfiniteLosses.some((e) => e.step === step && e.worker === worker)) return false;
    this.nonfiniteLosses.push({ step, worker });
    return true;
  }
}

/**
 * A worker's loss that was not finite. Kept across rollbacks (a replayed step is the same
 * event, not a new one) and in checkpoints.
 */
export interface NonfiniteLoss {
  step: number;
  worker: number;
}

/** A worker found off worker 0 at a tolerant checksum, and repaired: the tensor off the most. */
export interface SyncDrift {
  /** The step after which the checksums were compared. */
  step: number;
  worker: number;
  tensor: string;
  /** ‖x_k − x_0‖ / ‖x_0‖ of that tensor. */
  relative: number;
}

/**
 * Failures and rollback (docs/architecture.md §6): which failures a rollback cures, the budget
 * of rollbacks, the rollback itself (a new generation, the newest checkpoint or the start), and
 * the steps dropped under `--on-nonfinite skip`.
 * @module
 */
import { ActorDiedError, CallTimeoutError, CollectiveTimeoutError } from "../../runtime/mod.ts";
import { latestCheckpoint } from "../../train/checkpoint/checkpoint.ts";
import { DomainError } from "../../core/errors.ts";
import { StepProtocolError } from "../gpu_worker.ts";
import { type DriverContext, type RunState, TrainingError } from "./context.ts";
import { checkpointDir, restoreCheckpoint } from "./checkpoints.ts";
import type { Fleet, RunInputs } from "./setup.ts";

/** Rollbacks a run may make before it gives up. */
export const MAX_RECOVERIES = 5;

/**
 * A contribution was not finite under `--on-nonfinite skip`: the step is to be dropped. The
 * workers' optimizer state already took the step (HD-PiSSA's local optimizer runs in `step`), so
 * dropping it means rolling back and replaying up to it, then passing over it.
 */
export class DropStep extends DomainError {
  static override readonly code: string = "DROP_STEP";
  constructor(readonly step: number, readonly reason: string) {
    super(reason);
  }
}

/** Failures that a rollback to the last checkpoint can cure. */
export function recoverable(e: unknown): boolean {
  return e instanceof ActorDiedError || e instanceof CallTimeoutError ||
    e instanceof CollectiveTimeoutError || e instanceof StepProtocolError;
}

/** Rolls the run back after a failure or to drop a step, within the budget of rollbacks. */
export class Recovery {
  /** Steps dropped under `--on-nonfinite skip`, with why. */
  readonly dropped = new Map<number, string>();

  constructor(
    private readonly ctx: DriverContext,
    private readonly run: RunInputs,
    private readonly fleet: Fleet,
    private readonly state: RunState,
  ) {}

  /**
   * Handles a failed step: a step to drop, or a recoverable failure, is rolled back (true);
   * anything else is not (false) and stops the run.
   */
  async handle(e: unknown): Promise<boolean> {
    if (e instanceof DropStep) {
      this.dropped.set(e.step, e.reason);
      this.ctx.log(
        `step ${e.step}: ${e.reason}; dropping the step (--on-nonfinite skip): rolling back ` +
          `and replaying up to it`,
      );
      await this.rollbackAfter(e, false);
      return true;
    }
    if (!recoverable(e)) return false;
    this.ctx.log(`step ${this.state.nextStep} failed (${(e as Error).message}); rolling back`);
    await this.rollbackAfter(e as Error);
    return true;
  }

  /**
   * Rolls back, again if the rollback itself meets a recoverable failure; failures count against
   * the budget of rollbacks (a dropped step's first rollback does not).
   */
  async rollbackAfter(cause: Error, counted = true): Promise<void> {
    for (;;) {
      if (counted && this.state.recoveries >= MAX_RECOVERIES) {
        throw new TrainingError(
          `giving up after ${MAX_RECOVERIES} rollbacks; the last failure: ${cause.message}`,
        );
      }
      if (counted) this.state.recoveries++;
      counted = true;
      try {
        await this.rollback();
        this.ctx.emit("rollback", {
          generation: this.state.generation,
          next_step: this.state.nextStep,
          cause: cause.message,
          recoveries: this.state.recoveries,
        });
        return;
      } catch (e) {
        if (!recoverable(e)) throw e;
        cause = e as Error;
        this.ctx.log(`rollback failed (${cause.message}); trying again`);
      }
    }
  }

  /** Bumps the generation and rolls every worker back to the newest checkpoint (or the start). */
  async rollback(): Promise<void> {
    const { ctx, run, fleet, state } = this;
    state.generation++;
    const ckpt = await latestCheckpoint(checkpointDir(ctx));
    if (ckpt) {
      await restoreCheckpoint(ctx, run, fleet, state, ckpt);
    } else {
      await fleet.load(run.baseWeights, run, state.generation, true);
      await fleet.init(state.generation, state.factors, undefined, -1);
      state.nextStep = 0;
      state.steps = [];
    }
    ctx.log(`generation ${state.generation}: continuing at step ${state.nextStep}`);
  }
}

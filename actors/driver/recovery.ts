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
import {
  type DriverContext,
  type RunState,
  TrainingError,
  WorkersUnavailableError,
} from "./context.ts";
import { checkpointDir, restoreCheckpoint } from "./checkpoints.ts";
import { type Fleet, type RunInputs, WORKER_RESOURCES } from "./setup.ts";

/** Rollbacks a run may make before it gives up. */
export const MAX_RECOVERIES = 5;

/**
 * How long a rollback waits for a lost worker while no node has room for it (its host is gone,
 * or cut off, and no spare is free): past it the run stops with WorkersUnavailableError rather
 * than spend its rollbacks on calls that cannot be placed.
 */
export const NO_ROOM_MS = 15_000;
/** How long a rollback waits in all for its lost workers to be back (placement, constructor). */
export const WORKERS_BACK_MS = 120_000;

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
        await this.workersBack();
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

  /**
   * Waits until every worker is up again. A worker lost with its node restarts wherever a node
   * has room (its own node once back from a partition, a spare); a rollback before that would
   * only wait in its calls. Throws WorkersUnavailableError when no node has had room for one of
   * them for NO_ROOM_MS, when one will not come back (its restarts failed), or after
   * WORKERS_BACK_MS in all.
   */
  async workersBack(): Promise<void> {
    const { system } = this.ctx;
    const ids = this.fleet.workers.map((w) => w.ref.id);
    const start = Date.now();
    let roomSince = start;
    let announced = false;
    for (;;) {
      const known = new Map(system.actors().map((a) => [a.id, a]));
      const missing = ids.flatMap((id, k) => known.get(id)?.state === "up" ? [] : [k]);
      if (missing.length === 0) return;
      const gone = missing.filter((k) => known.get(ids[k])?.state === "gone");
      if (gone.length > 0) {
        throw new WorkersUnavailableError(gone, WORKER_RESOURCES, "its restarts failed");
      }
      const nodes = system.nodes();
      const room = nodes.some((n) =>
        Object.entries(WORKER_RESOURCES).every(([r, v]) =>
          (n.resources[r] ?? 0) - (n.used[r] ?? 0) >= v
        )
      ) ||
        // A node back from a partition still hosts the old instance, which a restart replaces.
        missing.some((k) =>
          nodes.some((n) => n.id === known.get(ids[k])?.node)
        );
      const now = Date.now();
      if (room) roomSince = now;
      else if (now - roomSince >= NO_ROOM_MS) {
        throw new WorkersUnavailableError(
          missing,
          WORKER_RESOURCES,
          `no node had room for ${NO_ROOM_MS / 1000} s; nodes: ${
            nodes.map((n) =>
              `${n.id}@${n.host} ${JSON.stringify(n.used)}/` +
              JSON.stringify(n.resources)
            ).join(", ") || "none"
          }`,
        );
      }
      if (now - start >= WORKERS_BACK_MS) {
        throw new WorkersUnavailableError(
          missing,
          WORKER_RESOURCES,
          `not back within ${WORKERS_BACK_MS / 1000} s`,
        );
      }
      if (!announced) {
        announced = true;
        this.ctx.log(`waiting for worker${missing.length === 1 ? "" : "s"} ${missing.join(", ")}`);
      }
      await new Promise((r) => setTimeout(r, 200));
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
      if (!state.factors) {
        throw new TrainingError("a rollback before the adapter init: no factors to start from");
      }
      await fleet.load(run.baseWeights, run, state.generation, true);
      await fleet.init(state.generation, state.factors, undefined, -1);
      state.nextStep = 0;
      state.steps = [];
    }
    ctx.log(`generation ${state.generation}: continuing at step ${state.nextStep}`);
  }
}

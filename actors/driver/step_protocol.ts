/**
 * One step of the protocol (docs/architecture.md §6, "One step"): gather first, shards out,
 * verify each contribution against its worker's reply (asking again for lost ones), validate,
 * combine, broadcast once, apply (broadcasting again for workers the update did not reach).
 * @module
 */
import type { z } from "zod";
import { CollectiveTimeoutError, type Gathering, withShape } from "../../runtime/mod.ts";
import type { WorkerShare } from "../../train/data/batching.ts";
import { packMicroBatch } from "../../train/data/encode.ts";
import { learningRate } from "../../train/optim/schedule.ts";
import { ContributionError, validateContribution } from "../../train/methods/combine.ts";
import { type ApplyOutput, Contribution } from "../messages.ts";
import { FRAME_SLACK, tensorDigest } from "../digest.ts";
import { UpdateMissingError } from "../gpu_worker.ts";
import {
  CALL,
  CALL_MS,
  type DriverContext,
  type DriverStep,
  mean,
  type RunState,
  TrainingError,
  type Worker,
} from "./context.ts";
import { DropStep } from "./recovery.ts";
import type { Fleet, RunInputs } from "./setup.ts";

/**
 * Waits for contributions still missing once every step reply is in. A worker publishes its
 * contribution before it replies, on the same connection, so a part missing after the reply was
 * lost (a server went away) or refused: the worker is asked to publish it again.
 */
const NUDGE_WAITS_MS = [200, 500, 1000, 2000, 4000];
/** How long an apply call waits for the broadcast update before the driver sends it again. */
const APPLY_WAIT_MS = 5000;
const APPLY_ATTEMPTS = 12;

/** The step protocol of one run: runs step `state.nextStep` of `state.generation`. */
export class StepProtocol {
  /** When the last update was broadcast again (one resend serves every waiting worker). */
  #rebroadcastAt = -Infinity;

  constructor(
    private readonly ctx: DriverContext,
    private readonly run: RunInputs,
    private readonly fleet: Fleet,
    private readonly state: RunState,
  ) {}

  #lr(t: number): number {
    const o = this.ctx.o;
    return learningRate(t, {
      schedule: o.schedule,
      lr: o.lr,
      warmupRatio: o.warmupRatio,
      totalSteps: this.run.plan.totalSteps,
    });
  }

  /** The micro-batch messages of one worker's share. */
  #batches(share: WorkerShare) {
    return share.microBatches.map((idx) => {
      const mb = packMicroBatch(this.run.train, idx, this.ctx.o.seqLen);
      return { rows: mb.rows, ids: mb.ids, targetMask: mb.targetMask };
    });
  }

  /** Runs the next step on every worker; returns its record (not yet recorded). */
  async step(): Promise<DriverStep> {
    const { ctx, run, state } = this;
    const o = ctx.o;
    const workers = this.fleet.workers;
    const t = state.nextStep;
    const g = state.generation;
    const plan = run.plan.step(t);
    const lr = this.#lr(t);
    const subject = `${ctx.prefix}.g${g}.s${t}.delta`;
    // Parts are held until the worker's own reply names their digest: whatever else is
    // published on the subject (forged, stale, damaged) cannot take a rank.
    const gathering = await ctx.system.collectives.gather(subject, o.workers, {
      schema: Contribution,
      timeoutMs: CALL_MS,
      verified: true,
      maxFrameBytes: 4 * run.layout.length + FRAME_SLACK,
    });
    const t0 = performance.now();
    const stepOf = (k: number) =>
      workers[k].step({
        generation: g,
        step: t,
        lr,
        batches: this.#batches(plan.workers[k]),
        subject,
      }, CALL);
    let replies;
    let parts;
    try {
      replies = await Promise.all(workers.map(async (_, k) => {
        const r = await stepOf(k);
        gathering.verify(
          k,
          (c) =>
            c.generation === g && c.step === t && c.worker === k &&
            tensorDigest(c.data) === r.digest,
        );
        return r;
      }));
      parts = await this.#awaitParts(gathering, stepOf);
    } catch (e) {
      gathering.cancel();
      throw e;
    }
    const tGathered = performance.now();
    // A worker whose loss diverged says so with a null loss (messages are JSON, without NaN):
    // an event of the run, counted and reported, not just a missing number in the step record.
    replies.forEach((r, k) => {
      if (r.loss === null && state.noteNonfiniteLoss(t, k)) {
        ctx.log(`step ${t}: the loss of worker ${k} is not finite`);
      }
    });
    let rejected = gathering.rejected;
    state.rejected += rejected;
    const computeMs = Math.max(...replies.map((r) => r.computeMs));
    let update: Float32Array;
    try {
      parts.forEach((p, k) => validateContribution(p.data, run.layout, k));
      update = ctx.method.combine(parts.map((p) => p.data));
    } catch (e) {
      if (!(e instanceof ContributionError)) throw e;
      if (e.kind === "nonfinite" && o.onNonfinite === "skip") throw new DropStep(t, e.message);
      throw new TrainingError(
        `step ${t}: ${e.message}` + (e.kind === "nonfinite" ? " (--on-nonfinite stop)" : ""),
      );
    }
    const tB0 = performance.now();
    const digest = tensorDigest(update);
    const broadcast = () =>
      ctx.system.collectives.broadcast(`${ctx.prefix}.update`, {
        generation: g,
        step: t,
        data: withShape(update, [update.length]),
      });
    await broadcast();
    const tB1 = performance.now();
    const applied = await Promise.all(
      workers.map((w) => this.#apply(w, { generation: g, step: t, lr, digest }, broadcast)),
    );
    const late = applied.reduce((n, a) => n + a.rejected, 0);
    rejected += late;
    state.rejected += late;
    const t1 = performance.now();
    return {
      step: t,
      loss: replies.every((r) => r.loss !== null)
        ? mean(replies.map((r) => r.loss as number))
        : null,
      lr,
      ms: t1 - t0,
      bytes_sent: mean(applied.map((a) => a.bytesSent)),
      bytes_received: mean(applied.map((a) => a.bytesReceived)),
      tokens: replies.reduce((n, r) => n + r.tokens, 0),
      compute_ms: computeMs,
      comm_ms: Math.max(0, tGathered - t0 - computeMs) + (tB1 - tB0),
      update_ms: Math.max(...applied.map((a) => a.updateMs)),
      rejected,
    };
  }

  /** Passes over a dropped step: every worker marks it done without computing or updating. */
  async passOver(reason: string | undefined): Promise<DriverStep> {
    const { ctx, state } = this;
    const t = state.nextStep;
    const g = state.generation;
    const lr = this.#lr(t);
    const t0 = performance.now();
    const applied = await Promise.all(
      this.fleet.workers.map((w) => this.#apply(w, { generation: g, step: t, lr }, null)),
    );
    const rejected = applied.reduce((n, a) => n + a.rejected, 0);
    state.rejected += rejected;
    ctx.log(`step ${t} dropped (--on-nonfinite skip)`);
    return {
      step: t,
      loss: null,
      lr,
      ms: performance.now() - t0,
      bytes_sent: mean(applied.map((a) => a.bytesSent)),
      bytes_received: mean(applied.map((a) => a.bytesReceived)),
      tokens: 0,
      compute_ms: 0,
      comm_ms: 0,
      update_ms: 0,
      rejected,
      skipped: reason,
    };
  }

  /**
   * The verified parts of a gather. Once every reply is in, a missing part was lost or refused:
   * its worker publishes it again (a repeated step call), a few times with growing waits.
   */
  async #awaitParts<T>(
    gathering: Gathering<T>,
    again: (k: number) => Promise<unknown>,
  ): Promise<T[]> {
    for (const ms of NUDGE_WAITS_MS) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const waited = await Promise.race([
        gathering.result,
        new Promise<null>((r) => timer = setTimeout(() => r(null), ms)),
      ]);
      clearTimeout(timer);
      if (waited) return waited;
      const missing = gathering.missing();
      this.ctx.log(`contributions of workers ${missing.join(", ")} did not arrive; asking again`);
      await Promise.all(missing.map(again));
    }
    const missing = gathering.missing();
    if (missing.length === 0) return await gathering.result;
    throw new CollectiveTimeoutError(`step ${this.state.nextStep} contributions`, missing);
  }

  /**
   * Has a worker apply the broadcast update named by `digest` (or skip the step without one).
   * An update that does not arrive (lost with a server) is broadcast again, at most once per
   * wait period for all the workers waiting together.
   */
  async #apply(
    w: Worker,
    call: { generation: number; step: number; lr: number; digest?: string },
    broadcast: (() => Promise<number>) | null,
  ): Promise<z.output<typeof ApplyOutput>> {
    for (let attempt = 1;; attempt++) {
      try {
        return await w.apply({
          ...call,
          skip: broadcast === null,
          waitMs: APPLY_WAIT_MS,
        }, CALL);
      } catch (e) {
        const missing = e instanceof UpdateMissingError;
        if (!missing || attempt >= APPLY_ATTEMPTS || !broadcast) throw e;
        if (performance.now() - this.#rebroadcastAt > APPLY_WAIT_MS / 2) {
          this.#rebroadcastAt = performance.now();
          this.ctx.log(
            `the update of step ${call.step} did not reach every worker; sending it again`,
          );
          await broadcast();
        }
      }
    }
  }
}

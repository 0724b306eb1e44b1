/**
 * `Driver`: owns the data order, the schedule, the step counter and the checkpoints of one
 * fine-tuning job, and sequences the K `GpuWorker`s (docs/architecture.md §6). Per step: shards out → gather
 * the K contributions (each taken only if its SHA-256 is the one its worker's reply names) →
 * validate (size, finite) → combine → broadcast once → apply (naming the update's SHA-256) →
 * loss, and every N steps W checksums and a checkpoint. Lost messages are sent again (calls are
 * idempotent; missing contributions are asked for again, missing updates broadcast again). A
 * worker failure bumps the generation and rolls every worker back to the last checkpoint; a
 * non-finite contribution stops the run or, under `--on-nonfinite skip`, drops its step.
 *
 * This file is the step loop and the actor; each concern is a module of `driver/`: `setup.ts`
 * (inputs, workers, the method's init), `step_protocol.ts` (one step), `recovery.ts` (rollbacks,
 * dropped steps), `sync.ts` (checksums, tolerant re-sync), `checkpoints.ts`, `report.ts`
 * (evaluation, export, report.json), `objects.ts` (objects the workers put for the driver),
 * `context.ts` (what they share).
 *
 * The Driver runs as an actor in the process that starts the job (the finetune CLI).
 * @module
 */
import { z } from "zod";
import { defineActor, type System } from "../runtime/mod.ts";
import {
  type FinetuneOptions,
  FinetuneOptionsSchema,
  resolvedConfig,
  SUMMARY_KEYS,
} from "../train/cli/options.ts";
import type { TrainingMethod } from "../train/methods/method.ts";
import { getMethod } from "../train/methods/registry.ts";
import type { EvalScore } from "../train/eval/score.ts";
import { type CheckpointState, latestCheckpoint } from "../train/checkpoint/checkpoint.ts";
import { evalSplitSchema, reportSchema, type RunReport } from "../train/report/report.ts";
import { WORKER_ERRORS } from "./gpu_worker.ts";
import {
  CALL_MS,
  type DriverContext,
  type DriverStep,
  type NonfiniteLoss,
  RunState,
  TrainingError,
  WorkersUnavailableError,
} from "./driver/context.ts";
import { checkResumable, Fleet, initMethod, loadInputs, type RunInputs } from "./driver/setup.ts";
import { StepProtocol } from "./driver/step_protocol.ts";
import { Recovery } from "./driver/recovery.ts";
import { verifyChecksums } from "./driver/sync.ts";
import { checkpointDir, restoreCheckpoint, saveCheckpoint } from "./driver/checkpoints.ts";
import { evaluate, exportModel, runReport } from "./driver/report.ts";

export { type DriverStep, TrainingError, WorkersUnavailableError };

/** What setup makes: the run's inputs, its workers, and the parts that use them. */
interface Parts {
  run: RunInputs;
  fleet: Fleet;
  protocol: StepProtocol;
  recovery: Recovery;
}

/** The Driver's logic: setup, the step loop, and the end of the run. */
export class DriverCore {
  readonly #ctx: DriverContext;
  readonly #state = new RunState();
  /** Set once the workers are spawned. */
  #parts: Parts | null = null;
  #evalBefore: EvalScore | null = null;
  /** The base model's evaluation, made by another run (--compare), or null. */
  readonly #baseEval: EvalScore | null;
  readonly #startedAt = new Date().toISOString();
  /** Log lines not yet handed to the caller (the CLI prints them above its progress bar). */
  #events: string[] = [];
  readonly #publish: (kind: string, data: unknown) => void;
  #publishFailed = false;

  /**
   * `publish` sends the run's application events (default: `system.emit`; the Driver actor passes
   * `ctx.emit`, which names it as their source).
   */
  constructor(
    system: System,
    job: string,
    o: FinetuneOptions,
    baseEval: EvalScore | null = null,
    publish: (kind: string, data: unknown) => void = (k, d) => system.emit(k, d),
  ) {
    this.#baseEval = baseEval;
    this.#publish = publish;
    const method: TrainingMethod = getMethod(o.method);
    this.#ctx = {
      system,
      job,
      o,
      method,
      prefix: `${system.namespace}.hd.${job}`,
      log: (line) => {
        this.#events.push(line);
        this.#emit("log", { line });
      },
      emit: (what, data) => this.#emit(what, data),
    };
  }

  /** Publishes `train.<what>`; an event that cannot be sent never stops the run. */
  #emit(what: string, data: Record<string, unknown>) {
    try {
      this.#publish(`train.${what}`, { job: this.#ctx.job, ...data });
    } catch (e) {
      if (this.#publishFailed) return;
      this.#publishFailed = true;
      this.#events.push(`events of the run are not published: ${(e as Error).message}`);
    }
  }

  /** The log lines since the last call. */
  drainLog(): string[] {
    return this.#events.splice(0);
  }

  get #p(): Parts {
    if (!this.#parts) throw new TrainingError("the driver is not set up (call setup first)");
    return this.#parts;
  }

  get totalSteps(): number {
    return this.#p.run.plan.totalSteps;
  }

  /** The next step to run. */
  get nextStep(): number {
    return this.#state.nextStep;
  }

  get generation(): number {
    return this.#state.generation;
  }

  /** Each worker's device, as it reported it. */
  get devices(): string[] {
    return this.#parts?.fleet.devices ?? [];
  }

  /** The chunks of W put into the object store so far, and the most bytes of them held at once. */
  get weightsStore(): { chunks: number; peakBytes: number } {
    const c = this.#parts?.fleet.storeBytes;
    return { chunks: c?.chunks ?? 0, peakBytes: c?.peak ?? 0 };
  }

  /** Loads model and data, starts the workers, evaluates the base model, initialises the method. */
  async setup(): Promise<void> {
    await this.#setup();
    const config = resolvedConfig(this.#ctx.o);
    this.#emit("run", {
      method: this.#ctx.o.method,
      total_steps: this.totalSteps,
      next_step: this.nextStep,
      generation: this.generation,
      workers: this.#ctx.o.workers,
      devices: this.devices,
      config: Object.fromEntries(
        SUMMARY_KEYS.filter((k) => k in config).map((k) => [k, config[k]]),
      ),
      started_at: this.#startedAt,
      resumed: this.#ctx.o.resume !== null,
      // The latest steps so far (a resumed run's), for a view that starts now.
      steps: this.#state.steps.slice(-2000),
    });
  }

  async #setup(): Promise<void> {
    const ctx = this.#ctx;
    const o = ctx.o;
    const state = this.#state;
    const run = await loadInputs(ctx);
    const resume = o.resume ? await latestCheckpoint(checkpointDir(ctx)) : null;
    if (o.resume && !resume) {
      throw new TrainingError(
        `--resume ${o.resume}: no complete checkpoint in ${checkpointDir(ctx)}`,
      );
    }
    if (resume) checkResumable(o, resume.state);

    const fleet = await Fleet.spawn(ctx);
    this.#parts = {
      run,
      fleet,
      protocol: new StepProtocol(ctx, run, fleet, state),
      recovery: new Recovery(ctx, run, fleet, state),
    };

    if (resume) {
      const saved = resume.state as CheckpointState & {
        eval_before?: EvalScore;
        nonfinite_losses?: NonfiniteLoss[];
      };
      this.#evalBefore = saved.eval_before ?? null;
      state.steps = resume.state.steps as DriverStep[];
      state.nonfiniteLosses = saved.nonfinite_losses ?? [];
      await restoreCheckpoint(ctx, run, fleet, state, resume);
      ctx.log(`resumed from ${resume.dir} at step ${state.nextStep}`);
      return;
    }

    await fleet.load(run.baseWeights, run, state.generation, true);
    if (run.evalPrepared) {
      if (this.#baseEval) {
        // --compare evaluates the base model once, in its first run: it is the same for all.
        this.#evalBefore = this.#baseEval;
        ctx.log("the base model's evaluation is the first run's");
      } else {
        ctx.log("evaluating the base model");
        this.#evalBefore = await evaluate(run, fleet);
      }
      if (this.#evalBefore) this.#emit("eval", { phase: "before", score: this.#evalBefore });
    }
    await initMethod(ctx, run, fleet, state);
    if (o.checkpointEvery > 0) {
      ctx.log(`checkpoints every ${o.checkpointEvery} steps in ${checkpointDir(ctx)}`);
    }
  }

  /**
   * Runs the next step. A recoverable failure (a worker died or timed out) rolls back to the
   * last checkpoint and returns null; the caller then continues from `nextStep`.
   */
  async step(): Promise<DriverStep | null> {
    const { protocol, recovery } = this.#p;
    const t = this.#state.nextStep;
    try {
      const rec = recovery.dropped.has(t)
        ? await protocol.passOver(recovery.dropped.get(t))
        : await protocol.step();
      return await this.#done(rec);
    } catch (e) {
      if (await recovery.handle(e)) return null;
      throw e;
    }
  }

  /** Records a finished step; checksums and checkpoints when they are due. */
  async #done(rec: DriverStep): Promise<DriverStep> {
    const o = this.#ctx.o;
    const state = this.#state;
    state.steps.push(rec);
    state.nextStep = rec.step + 1;
    this.#emit("step", {
      total_steps: this.totalSteps,
      generation: state.generation,
      record: rec,
    });
    if (rec.rejected > 0) {
      this.#emit("refused", { step: rec.step, count: rec.rejected, total: state.rejected });
    }
    const last = state.nextStep === this.totalSteps;
    if (last || (o.checksumEvery > 0 && state.nextStep % o.checksumEvery === 0)) {
      await this.verifyChecksums();
    }
    if (!last && o.checkpointEvery > 0 && state.nextStep % o.checkpointEvery === 0) {
      await this.checkpoint();
    }
    return rec;
  }

  /** Bumps the generation and rolls every worker back to the newest checkpoint (or the start). */
  recover(): Promise<void> {
    return this.#p.recovery.rollback();
  }

  /** Compares the workers' checksums (and re-synchronises them under tolerant sync). */
  verifyChecksums(): Promise<string> {
    return verifyChecksums(this.#ctx, this.#p.fleet, this.#state);
  }

  /** Writes a checkpoint of the state after the last applied step. */
  checkpoint(): Promise<string> {
    const { run, fleet } = this.#p;
    return saveCheckpoint(this.#ctx, run, fleet, this.#state, this.#evalBefore);
  }

  /** Greedy evaluation of the eval set, its prompts spread over the workers. */
  evaluate(): Promise<EvalScore | null> {
    return evaluate(this.#p.run, this.#p.fleet);
  }

  /** Merges, evaluates, exports the model folder and returns the report. */
  async finish(): Promise<RunReport> {
    const { run, fleet } = this.#p;
    await Promise.all(fleet.workers.map((w) => w.merge({}, { timeoutMs: CALL_MS })));
    let evalAfter: EvalScore | null = null;
    if (run.evalPrepared) {
      this.#ctx.log("evaluating the fine-tuned model");
      evalAfter = await evaluate(run, fleet);
      if (evalAfter) this.#emit("eval", { phase: "after", score: evalAfter });
    }
    const final = await exportModel(this.#ctx, run, fleet);
    const report = runReport(this.#ctx, run, fleet, this.#state, {
      final,
      evalBefore: this.#evalBefore,
      evalAfter,
      startedAt: this.#startedAt,
    });
    this.#emit("finished", {
      spectra: spectraForEvent(report.spectra ?? {}),
      effective_rank: report.effective_rank,
      timing: report.timing,
      recoveries: this.#state.recoveries,
      resyncs: this.#state.resyncs,
      rejected_messages: this.#state.rejected,
    });
    return report;
  }

  /** Stops the workers. */
  async close(): Promise<void> {
    await this.#parts?.fleet.close();
  }
}

/** Matrices and singular values per matrix that the `train.finished` event carries at most. */
const EVENT_MATRICES = 64;
const EVENT_SINGULAR_VALUES = 128;

/**
 * The spectra of ΔW, small enough for an event of any model: the largest singular values of up
 * to 64 matrices spread over the model, 4 significant digits.
 */
function spectraForEvent(spectra: Record<string, number[]>): Record<string, number[]> {
  const names = Object.keys(spectra);
  const stride = Math.max(1, names.length / EVENT_MATRICES);
  const out: Record<string, number[]> = {};
  for (let i = 0; i < names.length && Object.keys(out).length < EVENT_MATRICES; i += stride) {
    const name = names[Math.floor(i)];
    out[name] = spectra[name].slice(0, EVENT_SINGULAR_VALUES).map((v) => Number(v.toPrecision(4)));
  }
  return out;
}

const DriverStepSchema = z.object({
  step: z.number().int(),
  loss: z.number().nullable(),
  lr: z.number(),
  ms: z.number(),
  bytes_sent: z.number(),
  bytes_received: z.number(),
  compute_ms: z.number(),
  comm_ms: z.number(),
  update_ms: z.number(),
  rejected: z.number(),
  tokens: z.number().optional(),
  skipped: z.string().optional(),
});

/** The Driver actor: a thin typed front of {@link DriverCore}, hosted by the job's process. */
export const Driver = defineActor({
  name: "Driver",
  module: import.meta.url,
  init: z.object({
    job: z.string().regex(/^[A-Za-z0-9_-]+$/),
    options: FinetuneOptionsSchema,
    /** The base model's evaluation when another run already made it (the runs of --compare). */
    baseEval: evalSplitSchema.nullable().default(null),
  }),
  create: (input, ctx) =>
    new DriverCore(
      ctx.system,
      input.job,
      input.options,
      input.baseEval as EvalScore | null,
      ctx.emit,
    ),
  close: (core) => core.close(),
  // What the job (and so the finetune CLI) gets as itself: its own errors, and the workers'.
  errors: [TrainingError, WorkersUnavailableError, ...WORKER_ERRORS],
  methods: {
    setup: {
      input: z.object({}),
      output: z.object({
        totalSteps: z.number().int(),
        nextStep: z.number().int(),
        devices: z.array(z.string()),
        /** W through the object store during the setup (report.json's `weights_store`). */
        weightsStore: z.object({
          chunks: z.number().int().min(0),
          peakBytes: z.number().int().min(0),
        }),
        log: z.array(z.string()),
      }),
      handler: async (core) => {
        await core.setup();
        return {
          totalSteps: core.totalSteps,
          nextStep: core.nextStep,
          devices: core.devices,
          weightsStore: core.weightsStore,
          log: core.drainLog(),
        };
      },
    },
    step: {
      input: z.object({}),
      output: z.object({
        record: DriverStepSchema.nullable(),
        nextStep: z.number().int(),
        generation: z.number().int(),
        log: z.array(z.string()),
      }),
      handler: async (core) => {
        const record = await core.step();
        return {
          record,
          nextStep: core.nextStep,
          generation: core.generation,
          log: core.drainLog(),
        };
      },
    },
    checkpoint: {
      input: z.object({}),
      output: z.object({ dir: z.string() }),
      handler: async (core) => ({ dir: await core.checkpoint() }),
    },
    finish: {
      input: z.object({}),
      output: z.object({ report: reportSchema, log: z.array(z.string()) }),
      handler: async (core) => {
        const report = await core.finish();
        return { report: report as z.input<typeof reportSchema>, log: core.drainLog() };
      },
    },
  },
});

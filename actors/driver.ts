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
 * The Driver runs as an actor in the process that starts the job (the finetune CLI).
 * @module
 */
import { z } from "zod";
import {
  ActorDiedError,
  type ActorHandle,
  CallTimeoutError,
  CollectiveTimeoutError,
  defineActor,
  type Gathering,
  type System,
  withShape,
} from "../runtime/mod.ts";
import { adaptableLinears, expectedTensors, type LlamaConfig } from "../model/config.ts";
import {
  type HostTensor,
  loadModelFolder,
  parseSafetensors,
  saveModelFolder,
  serializeSafetensors,
} from "../model/safetensors.ts";
import { loadTokenizer, type Tokenizer } from "../model/tokenizer.ts";
import { BatchPlan, type WorkerShare } from "../train/data/batching.ts";
import { type EncodedExample, encodeExamples, packMicroBatch } from "../train/data/encode.ts";
import { loadJsonl } from "../train/data/jsonl.ts";
import { learningRate } from "../train/optim/schedule.ts";
import {
  type FinetuneOptions,
  FinetuneOptionsSchema,
  resolvedConfig,
  RESUME_KEYS,
  workerSettings,
} from "../train/cli/options.ts";
import { validateOptionsForModel } from "../train/cli/model_checks.ts";
import type { Layout } from "../train/methods/layout.ts";
import { ContributionError, validateContribution } from "../train/methods/combine.ts";
import { isFactorKey } from "../train/methods/factors.ts";
import type { TrainingMethod } from "../train/methods/method.ts";
import { getMethod } from "../train/methods/registry.ts";
import { effectiveRank } from "../train/report/effective_rank.ts";
import { maxRelativeDifference } from "../train/checkpoint/checksum.ts";
import type { EvalScore } from "../train/eval/score.ts";
import {
  type PreparedEval,
  prepareEval,
  scoreGenerations,
  stopIdsOf,
} from "../train/eval/evaluate.ts";
import {
  type CheckpointState,
  latestCheckpoint,
  type LoadedCheckpoint,
  writeCheckpoint,
} from "../train/checkpoint/checkpoint.ts";
import {
  evalSplitSchema,
  reportSchema,
  type RunReport,
  type StepRecord,
} from "../train/report/report.ts";
import { type ApplyOutput, Contribution } from "./messages.ts";
import { FRAME_SLACK, objectDigest, tensorDigest } from "./digest.ts";
import { GpuWorker, StepProtocolError, UpdateMissingError, WORKER_ERRORS } from "./gpu_worker.ts";
import { DomainError } from "../core/errors.ts";

/** The run cannot go on: unequal W across workers, a bad contribution under `stop`, ... */
export class TrainingError extends DomainError {
  static override readonly code: string = "TRAINING";
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

type Worker = ActorHandle<typeof GpuWorker>;

/**
 * A contribution was not finite under `--on-nonfinite skip`: the step is to be dropped. The
 * workers' optimizer state already took the step (HD-PiSSA's local optimizer runs in `step`), so
 * dropping it means rolling back and replaying up to it, then passing over it.
 */
class DropStep extends DomainError {
  static override readonly code: string = "DROP_STEP";
  constructor(readonly step: number, readonly reason: string) {
    super(reason);
  }
}

/** Failures that a rollback to the last checkpoint can cure. */
function recoverable(e: unknown): boolean {
  return e instanceof ActorDiedError || e instanceof CallTimeoutError ||
    e instanceof CollectiveTimeoutError || e instanceof StepProtocolError;
}

const CALL_MS = 10 * 60_000;
/** How far apart W may drift on mixed devices before the run stops (docs/architecture.md §2). */
const SYNC_TOLERANCE = 1e-6;

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
/** Rollbacks a run may make before it gives up. */
const MAX_RECOVERIES = 5;
/**
 * Waits for contributions still missing once every step reply is in. A worker publishes its
 * contribution before it replies, on the same connection, so a part missing after the reply was
 * lost (a server went away) or refused: the worker is asked to publish it again.
 */
const NUDGE_WAITS_MS = [200, 500, 1000, 2000, 4000];
/** How long an apply call waits for the broadcast update before the driver sends it again. */
const APPLY_WAIT_MS = 5000;
const APPLY_ATTEMPTS = 12;

export class DriverCore {
  readonly o: FinetuneOptions;
  /** The training method of `o.method`. */
  readonly method: TrainingMethod;
  readonly job: string;
  readonly system: System;
  config!: LlamaConfig;
  tokenizer!: Tokenizer;
  /** The base model's weights (what ΔW is measured from). */
  baseWeights!: Map<string, HostTensor>;
  train!: EncodedExample[];
  evalPrepared: PreparedEval | null = null;
  plan!: BatchPlan;
  layout!: Layout;
  workers: Worker[] = [];
  devices: string[] = [];
  /** Workers that `--device auto` put on a CPU adapter, and why. */
  deviceFallbacks: { worker: number; device: string; reason: string }[] = [];
  generation = 0;
  /** The next step to run. */
  nextStep = 0;
  steps: DriverStep[] = [];
  evalBefore: EvalScore | null = null;
  evalAfter: EvalScore | null = null;
  optimizerFloats = 0;
  recoveries = 0;
  /** Re-synchronisations of W from worker 0 (tolerant sync). */
  resyncs = 0;
  rejected = 0;
  startedAt = new Date().toISOString();
  checkpointDir: string;
  /** Names in the object store of the current initial factors (kept for rollbacks). */
  #factorsName = "";
  /** Log lines not yet handed to the caller (the CLI prints them above its progress bar). */
  #events: string[] = [];
  /** When the last update was broadcast again (one resend serves every waiting worker). */
  #rebroadcastAt = -Infinity;
  /** The base model's evaluation, made by another run (--compare), or null. */
  #baseEval: EvalScore | null;
  /** Steps dropped under `--on-nonfinite skip`, with why. */
  #dropped = new Map<number, string>();

  constructor(system: System, job: string, o: FinetuneOptions, baseEval: EvalScore | null = null) {
    this.#baseEval = baseEval;
    this.system = system;
    this.job = job;
    this.o = o;
    this.method = getMethod(o.method);
    this.checkpointDir = `${o.out}/checkpoints`;
  }

  #log(line: string): void {
    this.#events.push(line);
  }

  /** The log lines since the last call. */
  drainLog(): string[] {
    return this.#events.splice(0);
  }

  get prefix(): string {
    return `${this.system.namespace}.hd.${this.job}`;
  }

  get totalSteps(): number {
    return this.plan.totalSteps;
  }

  /** Loads model and data, starts the workers, evaluates the base model, initialises the method. */
  async setup(): Promise<void> {
    const o = this.o;
    const model = await loadModelFolder(o.model);
    this.config = model.config;
    this.baseWeights = new Map(model.tensors);
    validateOptionsForModel(o, this.config);
    this.tokenizer = await loadTokenizer(o.model, this.config);
    const jsonl = {
      promptField: o.promptField,
      responseField: o.responseField,
      taskField: o.taskField,
      skipMalformed: o.skipMalformed,
    };
    const data = await loadJsonl(o.data, jsonl);
    if (data.skipped > 0) this.#log(`skipped ${data.skipped} malformed lines of ${o.data}`);
    this.train = encodeExamples(this.tokenizer, data.examples, o.seqLen);
    this.plan = new BatchPlan({
      numExamples: this.train.length,
      batchSize: o.batchSize,
      workers: o.workers,
      microBatch: o.microBatch,
      epochs: o.epochs,
      maxSteps: o.maxSteps ?? undefined,
      shuffle: o.shuffle,
      seed: o.seed,
    });
    if (o.eval) {
      const ev = await loadJsonl(o.eval, jsonl);
      // The subset is fixed (seed 0), so runs with different seeds are scored on the same items.
      this.evalPrepared = prepareEval(this.tokenizer, ev.examples, {
        perTask: o.evalPerTask,
        all: o.evalAll,
        maxNewTokens: o.maxNewTokens ?? undefined,
        stopIds: stopIdsOf(this.config, this.tokenizer),
      });
    }
    this.layout = this.method.layout(this.config, { targets: o.targets, rank: o.rank });

    const resume = o.resume ? await latestCheckpoint(this.checkpointDir) : null;
    if (o.resume && !resume) {
      throw new TrainingError(
        `--resume ${o.resume}: no complete checkpoint in ${this.checkpointDir}`,
      );
    }
    if (resume) this.#checkResumable(resume.state);

    this.#log(`starting ${o.workers} GPU workers`);
    this.workers = await Promise.all(
      Array.from({ length: o.workers }, (_, k) =>
        this.system.spawn(GpuWorker, { worker: k }, {
          name: `${this.job}-w${k}`,
          resources: { gpu: 1 },
          maxRestarts: 3,
          withinMs: 60_000,
          placementTimeoutMs: 60_000,
        })),
    );

    if (resume) {
      this.evalBefore = (resume.state as CheckpointState & { eval_before?: EvalScore })
        .eval_before ?? null;
      this.steps = resume.state.steps as DriverStep[];
      await this.#restore(resume);
      this.#log(`resumed from ${resume.dir} at step ${this.nextStep}`);
      return;
    }

    await this.#loadWorkers(this.baseWeights);
    if (this.evalPrepared) {
      if (this.#baseEval) {
        // --compare evaluates the base model once, in its first run: it is the same for all.
        this.evalBefore = this.#baseEval;
        this.#log("the base model's evaluation is the first run's");
      } else {
        this.#log("evaluating the base model");
        this.evalBefore = await this.evaluate();
      }
    }
    const announce = this.method.initLog(this.config, o);
    if (announce) this.#log(announce);
    const init = this.method.init(this.config, this.baseWeights, {
      workers: o.workers,
      rank: o.rank,
      alpha: o.alpha,
      targets: o.targets,
      svd: o.svd,
      svdNiter: o.svdNiter,
      seed: o.seed,
    });
    const tensors = this.method.initToTensors(this.config, o, init);
    this.#factorsName = `${this.job}.factors`;
    await (await this.system.objects()).put(this.#factorsName, serializeSafetensors(tensors));
    await this.#initWorkers(undefined, -1);
    this.nextStep = 0;
    if (o.checkpointEvery > 0) {
      this.#log(`checkpoints every ${o.checkpointEvery} steps in ${this.checkpointDir}`);
    }
  }

  #checkResumable(state: CheckpointState): void {
    const now = resolvedConfig(this.o);
    const keys = RESUME_KEYS;
    for (const k of keys) {
      if (JSON.stringify(state.config[k]) !== JSON.stringify(now[k])) {
        throw new TrainingError(
          `--resume: the checkpoint was made with ${k} = ${JSON.stringify(state.config[k])}, ` +
            `this run has ${JSON.stringify(now[k])}; resume with the same flags`,
        );
      }
    }
  }

  /** Puts W into the object store and has every worker load it. */
  async #loadWorkers(weights: ReadonlyMap<string, HostTensor>): Promise<void> {
    const o = this.o;
    const name = `${this.job}.weights.g${this.generation}`;
    const W = new Map<string, HostTensor>();
    for (const t of expectedTensors(this.config)) W.set(t.name, weights.get(t.name)!);
    const store = await this.system.objects();
    await store.put(
      name,
      serializeSafetensors(W, { format: "pt", config: JSON.stringify(this.config) }),
    );
    const maxMicroBatches = o.batchSize / (o.workers * o.microBatch);
    const loaded = await Promise.all(this.workers.map((w) =>
      w.load({
        weights: name,
        seqLen: o.seqLen,
        microBatch: o.microBatch,
        maxMicroBatches,
        settings: workerSettings(o),
        updateSubject: `${this.prefix}.update`,
        updateFloats: this.method.updateLength(this.layout, o.workers),
      }, { timeoutMs: CALL_MS, idempotent: true })
    ));
    this.devices = loaded.map((r) => r.device);
    loaded.forEach((r, k) => {
      if (r.fallback === null || this.deviceFallbacks.some((f) => f.worker === k)) return;
      // Announced once per worker and kept for report.json: a run on the CPU adapter is slow,
      // and a user who expected a GPU must see why it did not get one.
      this.deviceFallbacks.push({ worker: k, device: r.device, reason: r.fallback });
      this.#log(
        `warning: worker ${k} runs on a CPU adapter (${r.device}): ${r.fallback}; ` +
          `--device gpu refuses to, --device cpu asks for it`,
      );
    });
    await store.delete(name);
  }

  async #initWorkers(states: string[] | undefined, appliedStep: number): Promise<void> {
    const out = await Promise.all(this.workers.map((w, k) =>
      w.init({
        generation: this.generation,
        factors: this.#factorsName,
        state: states?.[k],
        appliedStep,
      }, { timeoutMs: CALL_MS, idempotent: true })
    ));
    this.optimizerFloats = out[0].optimizerFloats;
  }

  /** Rolls every worker back to a checkpoint (resume, or recovery after a failure). */
  async #restore(ckpt: LoadedCheckpoint): Promise<void> {
    const shared = parseSafetensors(
      ckpt.files.get("shared.safetensors")!,
      {},
      "shared.safetensors",
    );
    const W = new Map<string, HostTensor>();
    const factors = new Map<string, HostTensor>();
    for (const [k, t] of shared.tensors) {
      if (isFactorKey(k)) factors.set(k, t);
      else W.set(k, t);
    }
    // PiSSA's live W is the residual; the worker keeps it as loaded.
    const store = await this.system.objects();
    this.#factorsName = `${this.job}.factors.g${this.generation}`;
    await store.put(this.#factorsName, serializeSafetensors(factors));
    await this.#loadWorkers(W);
    const states: string[] = [];
    for (let k = 0; k < this.o.workers; k++) {
      const name = `${this.job}.state.g${this.generation}.w${k}`;
      await store.put(name, ckpt.files.get(`worker-${k}.safetensors`)!);
      states.push(name);
    }
    await this.#initWorkers(states, ckpt.state.applied_step);
    for (const n of states) await store.delete(n);
    this.nextStep = ckpt.state.applied_step + 1;
    this.steps = this.steps.filter((s) => s.step < this.nextStep);
  }

  /** The micro-batch messages of one worker's share. */
  #batches(share: WorkerShare) {
    return share.microBatches.map((idx) => {
      const mb = packMicroBatch(this.train, idx, this.o.seqLen);
      return { rows: mb.rows, ids: mb.ids, targetMask: mb.targetMask };
    });
  }

  /**
   * Runs the next step. A recoverable failure (a worker died or timed out) rolls back to the
   * last checkpoint and returns null; the caller then continues from `nextStep`.
   */
  async step(): Promise<DriverStep | null> {
    try {
      if (this.#dropped.has(this.nextStep)) return await this.#dropStep();
      return await this.#step();
    } catch (e) {
      if (e instanceof DropStep) {
        this.#dropped.set(e.step, e.reason);
        this.#log(
          `step ${e.step}: ${e.reason}; dropping the step (--on-nonfinite skip): rolling back ` +
            `and replaying up to it`,
        );
        await this.#recoverFrom(e, false);
        return null;
      }
      if (!recoverable(e)) throw e;
      this.#log(`step ${this.nextStep} failed (${(e as Error).message}); rolling back`);
      await this.#recoverFrom(e as Error);
      return null;
    }
  }

  /**
   * Rolls back, again if the rollback itself meets a recoverable failure; failures count against
   * the budget of rollbacks (a dropped step's first rollback does not).
   */
  async #recoverFrom(cause: Error, counted = true): Promise<void> {
    for (;;) {
      if (counted && this.recoveries >= MAX_RECOVERIES) {
        throw new TrainingError(
          `giving up after ${MAX_RECOVERIES} rollbacks; the last failure: ${cause.message}`,
        );
      }
      if (counted) this.recoveries++;
      counted = true;
      try {
        await this.recover();
        return;
      } catch (e) {
        if (!recoverable(e)) throw e;
        cause = e as Error;
        this.#log(`rollback failed (${cause.message}); trying again`);
      }
    }
  }

  /** Bumps the generation and rolls every worker back to the newest checkpoint (or the start). */
  async recover(): Promise<void> {
    this.generation++;
    const ckpt = await latestCheckpoint(this.checkpointDir);
    if (ckpt) {
      await this.#restore(ckpt);
    } else {
      await this.#loadWorkers(this.baseWeights);
      await this.#initWorkers(undefined, -1);
      this.nextStep = 0;
      this.steps = [];
    }
    this.#log(`generation ${this.generation}: continuing at step ${this.nextStep}`);
  }

  async #step(): Promise<DriverStep> {
    const o = this.o;
    const t = this.nextStep;
    const g = this.generation;
    const plan = this.plan.step(t);
    const lr = learningRate(t, {
      schedule: o.schedule,
      lr: o.lr,
      warmupRatio: o.warmupRatio,
      totalSteps: this.totalSteps,
    });
    const subject = `${this.prefix}.g${g}.s${t}.delta`;
    // Parts are held until the worker's own reply names their digest: whatever else is
    // published on the subject (forged, stale, damaged) cannot take a rank.
    const gathering = await this.system.collectives.gather(subject, o.workers, {
      schema: Contribution,
      timeoutMs: CALL_MS,
      verified: true,
      maxFrameBytes: 4 * this.layout.length + FRAME_SLACK,
    });
    const t0 = performance.now();
    const stepOf = (k: number) =>
      this.workers[k].step({
        generation: g,
        step: t,
        lr,
        batches: this.#batches(plan.workers[k]),
        subject,
      }, { timeoutMs: CALL_MS, idempotent: true });
    let replies;
    let parts;
    try {
      replies = await Promise.all(this.workers.map(async (_, k) => {
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
    let rejected = gathering.rejected;
    this.rejected += rejected;
    const computeMs = Math.max(...replies.map((r) => r.computeMs));
    let update: Float32Array;
    try {
      parts.forEach((p, k) => validateContribution(p.data, this.layout, k));
      update = this.method.combine(parts.map((p) => p.data));
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
      this.system.collectives.broadcast(`${this.prefix}.update`, {
        generation: g,
        step: t,
        data: withShape(update, [update.length]),
      });
    await broadcast();
    const tB1 = performance.now();
    const applied = await Promise.all(
      this.workers.map((w) => this.#apply(w, { generation: g, step: t, lr, digest }, broadcast)),
    );
    const late = applied.reduce((n, a) => n + a.rejected, 0);
    rejected += late;
    this.rejected += late;
    const t1 = performance.now();
    const rec: DriverStep = {
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
    return await this.#done(rec);
  }

  /** Passes over a dropped step: every worker marks it done without computing or updating. */
  async #dropStep(): Promise<DriverStep> {
    const t = this.nextStep;
    const g = this.generation;
    const lr = learningRate(t, {
      schedule: this.o.schedule,
      lr: this.o.lr,
      warmupRatio: this.o.warmupRatio,
      totalSteps: this.totalSteps,
    });
    const t0 = performance.now();
    const applied = await Promise.all(
      this.workers.map((w) => this.#apply(w, { generation: g, step: t, lr }, null)),
    );
    const rejected = applied.reduce((n, a) => n + a.rejected, 0);
    this.rejected += rejected;
    this.#log(`step ${t} dropped (--on-nonfinite skip)`);
    return await this.#done({
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
      skipped: this.#dropped.get(t),
    });
  }

  /** Records a finished step; checksums and checkpoints when they are due. */
  async #done(rec: DriverStep): Promise<DriverStep> {
    const o = this.o;
    this.steps.push(rec);
    this.nextStep = rec.step + 1;
    const last = this.nextStep === this.totalSteps;
    if (last || (o.checksumEvery > 0 && this.nextStep % o.checksumEvery === 0)) {
      await this.verifyChecksums();
    }
    if (!last && o.checkpointEvery > 0 && this.nextStep % o.checkpointEvery === 0) {
      await this.checkpoint();
    }
    return rec;
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
      this.#log(`contributions of workers ${missing.join(", ")} did not arrive; asking again`);
      await Promise.all(missing.map(again));
    }
    const missing = gathering.missing();
    if (missing.length === 0) return await gathering.result;
    throw new CollectiveTimeoutError(`step ${this.nextStep} contributions`, missing);
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
        }, { timeoutMs: CALL_MS, idempotent: true });
      } catch (e) {
        const missing = e instanceof UpdateMissingError;
        if (!missing || attempt >= APPLY_ATTEMPTS || !broadcast) throw e;
        if (performance.now() - this.#rebroadcastAt > APPLY_WAIT_MS / 2) {
          this.#rebroadcastAt = performance.now();
          this.#log(`the update of step ${call.step} did not reach every worker; sending it again`);
          await broadcast();
        }
      }
    }
  }

  /** Whether W may differ across workers within 1e-6 (mixed devices) or must be bit-identical. */
  get tolerant(): boolean {
    return this.o.sync === "tolerant" || (this.o.sync === "auto" && new Set(this.devices).size > 1);
  }

  /**
   * Compares every worker's W. Exact sync: any difference stops the run. Tolerant sync (mixed
   * devices, docs/architecture.md §2): a worker more than 1e-6 relative away from worker 0 stops the run;
   * otherwise every worker takes worker 0's W (and trained adapter), so that rounding
   * differences never accumulate.
   */
  async verifyChecksums(): Promise<string> {
    const opts = { timeoutMs: CALL_MS, idempotent: true };
    const sums = await Promise.all(this.workers.map((w) => w.checksum({}, opts)));
    const first = sums[0].sha256;
    const bad = sums.findIndex((s) => s.sha256 !== first);
    const after = this.nextStep - 1;
    if (!this.tolerant) {
      if (bad >= 0) {
        throw new TrainingError(
          `W differs between workers after step ${after}: worker 0 has ` +
            `${first.slice(0, 12)}…, worker ${bad} has ${sums[bad].sha256.slice(0, 12)}… ` +
            `(on devices that round differently, use --sync tolerant)`,
        );
      }
      return first;
    }
    if (this.workers.length === 1) return first;
    const store = await this.system.objects();
    const read = async (k: number) => {
      const name = `${this.job}.sync.g${this.generation}.w${k}`;
      const e = await this.workers[k].exportShared({ name }, opts);
      const bytes = await store.get(e.name);
      if (objectDigest(bytes) !== e.digest) {
        throw new TrainingError(`${e.name} changed after worker ${k} exported it`);
      }
      return { e, bytes };
    };
    const ref = await read(0);
    try {
      const refTensors = parseSafetensors(ref.bytes, {}, ref.e.name).tensors;
      for (let k = 1; k < sums.length; k++) {
        if (sums[k].sha256 === first) continue;
        const other = await read(k);
        await store.delete(other.e.name);
        const d = maxRelativeDifference(
          parseSafetensors(other.bytes, {}, other.e.name).tensors,
          refTensors,
        );
        if (!(d.value <= SYNC_TOLERANCE)) {
          throw new TrainingError(
            `W of worker ${k} is ${d.value.toExponential(2)} (relative) away from worker 0's in ` +
              `${d.name} after step ${after}, more than ${SYNC_TOLERANCE}`,
          );
        }
      }
      const synced = await Promise.all(
        this.workers.slice(1).map((w) =>
          w.importShared({ name: ref.e.name, digest: ref.e.digest }, opts)
        ),
      );
      const off = synced.findIndex((s) => s.sha256 !== first);
      if (off >= 0) throw new TrainingError(`worker ${off + 1} did not take worker 0's W`);
      this.resyncs++;
    } finally {
      await store.delete(ref.e.name);
    }
    return first;
  }

  /** Writes a checkpoint of the state after the last applied step. */
  async checkpoint(): Promise<string> {
    const store = await this.system.objects();
    const t = this.nextStep - 1;
    // Names carry the generation, and every object read must have the digest its worker
    // reported: a stale worker of an older generation cannot slip its state into this one.
    const saved = await Promise.all(
      this.workers.map((w, k) =>
        w.save({ name: `${this.job}.ckpt.g${this.generation}.w${k}`, shared: k === 0 }, {
          timeoutMs: CALL_MS,
          idempotent: true,
        })
      ),
    );
    const fetch = async (e: { name: string; digest: string }) => {
      const bytes = await store.get(e.name);
      if (objectDigest(bytes) !== e.digest) {
        throw new TrainingError(`checkpoint object ${e.name} changed after its worker saved it`);
      }
      return bytes;
    };
    const files = new Map<string, Uint8Array>();
    files.set("shared.safetensors", await fetch(saved[0].shared!));
    for (let k = 0; k < saved.length; k++) {
      files.set(`worker-${k}.safetensors`, await fetch(saved[k].state));
    }
    for (const s of saved) {
      await store.delete(s.state.name);
      if (s.shared) await store.delete(s.shared.name);
    }
    const state = {
      applied_step: t,
      generation: this.generation,
      method: this.o.method,
      workers: this.o.workers,
      cursor: this.plan.cursor(this.nextStep),
      seed: this.o.seed,
      config: resolvedConfig(this.o),
      steps: this.steps,
      eval_before: this.evalBefore,
    };
    const dir = await writeCheckpoint(this.checkpointDir, state, files);
    return dir;
  }

  /** Greedy evaluation of the eval set, its prompts spread over the workers. */
  async evaluate(): Promise<EvalScore | null> {
    const p = this.evalPrepared;
    if (!p) return null;
    const K = this.workers.length;
    const per = Math.ceil(p.items.length / K);
    const shards = this.workers.map((_, k) => p.items.slice(k * per, (k + 1) * per));
    const outs = await Promise.all(this.workers.map((w, k) =>
      w.generate({
        prompts: shards[k].map((it) => it.prompt),
        maxNewTokens: p.maxNewTokens,
        stopIds: p.stopIds,
      }, { timeoutMs: CALL_MS, idempotent: true })
    ));
    return scoreGenerations(this.tokenizer, p, outs.flatMap((o) => o.tokens)).score;
  }

  /** Merges, evaluates, exports the model folder and returns the report. */
  async finish(): Promise<RunReport> {
    await Promise.all(this.workers.map((w) => w.merge({}, { timeoutMs: CALL_MS })));
    if (this.evalPrepared) {
      this.#log("evaluating the fine-tuned model");
      this.evalAfter = await this.evaluate();
    }
    const store = await this.system.objects();
    const name = `${this.job}.final`;
    await this.workers[0].exportWeights({ name }, { timeoutMs: CALL_MS });
    const final = parseSafetensors(await store.get(name), {}, name).tensors;
    await store.delete(name);
    await saveModelFolder(this.o.out, this.config, final);
    await this.#copyTokenizerFiles();

    const effective: Record<string, { "rank_1e-2": number; energy90: number }> = {};
    const spectra: Record<string, number[]> = {};
    for (const l of adaptableLinears(this.config, this.o.targets)) {
      const r = effectiveRank(final.get(l.name)!, this.baseWeights.get(l.name)!, l.name);
      effective[l.name] = { "rank_1e-2": r["rank_1e-2"], energy90: r.energy90 };
      spectra[l.name] = r.spectrum.map((v) => v);
    }
    const sum = (f: (s: DriverStep) => number) => this.steps.reduce((a, s) => a + f(s), 0);
    const o = this.o;
    return {
      method: o.method,
      config: resolvedConfig(o) as RunReport["config"],
      steps: this.steps.map((s) => ({
        step: s.step,
        loss: s.loss,
        lr: s.lr,
        ms: s.ms,
        bytes_sent: s.bytes_sent,
        bytes_received: s.bytes_received,
        tokens: s.tokens,
        compute_ms: s.compute_ms,
        comm_ms: s.comm_ms,
        update_ms: s.update_ms,
        ...(s.skipped ? { skipped: s.skipped } : {}),
      })),
      eval: { before: this.evalBefore, after: this.evalAfter },
      effective_rank: effective,
      spectra,
      timing: {
        total_ms: Date.now() - Date.parse(this.startedAt),
        compute_ms: sum((s) => s.compute_ms),
        comm_ms: sum((s) => s.comm_ms),
        update_ms: sum((s) => s.update_ms),
      },
      memory: {
        optimizer_floats_per_worker: this.optimizerFloats,
        trainable_floats_per_worker: this.optimizerFloats / 2,
      },
      bytes_per_step_formula: this.method.traffic(this.layout, o.workers),
      started_at: this.startedAt,
      finished_at: new Date().toISOString(),
      model: {
        path: o.model,
        parameters: [...this.baseWeights.values()].reduce((n, t) => n + t.data.length, 0),
      },
      data: { path: o.data, examples: this.train.length },
      devices: this.devices,
      device_fallback: this.deviceFallbacks,
      recoveries: this.recoveries,
      resyncs: this.resyncs,
      sync: this.tolerant ? "tolerant" : "exact",
      rejected_messages: this.rejected,
    } as RunReport;
  }

  async #copyTokenizerFiles(): Promise<void> {
    if (this.tokenizer.kind !== "hf") return;
    for (const f of ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]) {
      try {
        await Deno.copyFile(`${this.o.model}/${f}`, `${this.o.out}/${f}`);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    }
  }

  /** Stops the workers. */
  async close(): Promise<void> {
    await Promise.allSettled(this.workers.map((w) => this.system.stop(w)));
    this.workers = [];
  }
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
    new DriverCore(ctx.system, input.job, input.options, input.baseEval as EvalScore | null),
  close: (core) => core.close(),
  // What the job (and so the finetune CLI) gets as itself: its own errors, and the workers'.
  errors: [TrainingError, ...WORKER_ERRORS],
  methods: {
    setup: {
      input: z.object({}),
      output: z.object({
        totalSteps: z.number().int(),
        nextStep: z.number().int(),
        devices: z.array(z.string()),
        log: z.array(z.string()),
      }),
      handler: async (core) => {
        await core.setup();
        return {
          totalSteps: core.totalSteps,
          nextStep: core.nextStep,
          devices: core.devices,
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

/**
 * The dashboard's model of a system: the cluster as `system.introspect()` sees it, the latest
 * training run as its Driver's events tell it (docs/architecture.md §6, "Events of a run"), and
 * the recent events. It is fed only by the system's state and events API, so it works the same in
 * the process that runs the job and in one that joined the system by URL. `dashboardStateSchema`
 * is the contract of `GET /api/state`.
 * @module
 */
import { z } from "zod";
import {
  type EventRecord,
  eventRecord,
  eventRecordSchema,
  type System,
  systemSnapshotSchema,
} from "../runtime/mod.ts";
import { evalSplitSchema } from "../train/report/report.ts";

const nonNeg = z.number().nonnegative();
const count = z.number().int().nonnegative();

/** One step as the Driver publishes it (`train.step`'s `record`). */
export const stepRecordSchema = z.object({
  step: count,
  /** Mean loss over the workers; null when not finite. */
  loss: z.number().nullable(),
  lr: nonNeg,
  ms: nonNeg,
  /** Payload bytes one worker sent / received during the step (mean over the workers). */
  bytes_sent: nonNeg,
  bytes_received: nonNeg,
  tokens: nonNeg.optional(),
  compute_ms: nonNeg,
  comm_ms: nonNeg,
  update_ms: nonNeg,
  /** Messages refused on the job's subjects during the step. */
  rejected: count.optional(),
  /** Set when the step was dropped (`--on-nonfinite skip`). */
  skipped: z.string().optional(),
});
export type StepRecord = z.infer<typeof stepRecordSchema>;

const rollbackSchema = z.object({
  time: z.number(),
  generation: count,
  next_step: count,
  cause: z.string(),
});

/** What the run looks like now, from its latest steps. */
export const summarySchema = z.object({
  /** Steps done (the next step's index). */
  step: count,
  total: count.nullable(),
  loss: z.number().nullable(),
  lr: z.number().nullable(),
  /** Over the last (up to) 20 steps. */
  msPerStep: z.number().nullable(),
  tokensPerSec: z.number().nullable(),
  /** Steps left × msPerStep (the final evaluation and export not included). */
  etaMs: z.number().nullable(),
  bytesSent: z.number().nullable(),
  bytesReceived: z.number().nullable(),
  computeMs: z.number().nullable(),
  commMs: z.number().nullable(),
  updateMs: z.number().nullable(),
});
export type Summary = z.infer<typeof summarySchema>;

/** One training run (one job; `--compare` makes one per method). */
export const trainingSchema = z.object({
  job: z.string(),
  method: z.string().nullable(),
  totalSteps: count.nullable(),
  generation: count,
  workers: count.nullable(),
  devices: z.array(z.string()),
  /** The run's summary flags (`config` names). */
  config: z.record(z.string(), z.unknown()),
  startedAt: z.string().nullable(),
  /** Every step recorded, in order (a rollback drops the later ones; their replays follow). */
  steps: z.array(stepRecordSchema),
  evals: z.object({
    before: evalSplitSchema.nullable(),
    after: evalSplitSchema.nullable(),
  }),
  rollbacks: z.array(rollbackSchema),
  resyncs: count,
  /** Messages refused on the job's subjects so far. */
  refused: count,
  /** Set at the end of the run: ΔW's spectra (largest singular values) and effective ranks. */
  finished: z.object({
    spectra: z.record(z.string(), z.array(nonNeg)),
    effective_rank: z.record(z.string(), z.record(z.string(), z.number())),
    timing: z.record(z.string(), z.number()).nullable(),
  }).nullable(),
  summary: summarySchema,
});
export type Training = z.infer<typeof trainingSchema>;

/** `GET /api/state`: the whole picture. */
export const dashboardStateSchema = z.object({
  version: z.literal(1),
  time: z.number(),
  /** Whether this process's connection to the system is open. */
  connected: z.boolean(),
  cluster: systemSnapshotSchema,
  /** The latest run; null before any. */
  training: trainingSchema.nullable(),
  /** The runs before it (`--compare`), in order. */
  earlier: z.array(z.object({
    job: z.string(),
    method: z.string().nullable(),
    steps: count,
    finalLoss: z.number().nullable(),
    finished: z.boolean(),
  })),
  /** The latest events, oldest first; steps are in `training`, not here. */
  events: z.array(eventRecordSchema),
});
export type DashboardState = z.infer<typeof dashboardStateSchema>;

/** Events kept for the page. */
const MAX_EVENTS = 300;
/** Steps kept per run (the oldest are thinned out beyond that). */
const MAX_STEPS = 20_000;
/** Runs remembered. */
const MAX_RUNS = 16;

const runEvent = z.object({
  job: z.string(),
  method: z.string(),
  total_steps: count,
  next_step: count,
  generation: count,
  workers: count,
  devices: z.array(z.string()),
  config: z.record(z.string(), z.unknown()),
  started_at: z.string(),
  steps: z.array(stepRecordSchema).optional(),
});
const stepEvent = z.object({
  job: z.string(),
  total_steps: count,
  generation: count,
  record: stepRecordSchema,
});
const rollbackEvent = z.object({
  job: z.string(),
  generation: count,
  next_step: count,
  cause: z.string(),
});
const resyncEvent = z.object({ job: z.string(), resyncs: count });
const refusedEvent = z.object({ job: z.string(), total: count });
const evalEvent = z.object({
  job: z.string(),
  phase: z.enum(["before", "after"]),
  score: evalSplitSchema,
});
const finishedEvent = z.object({
  job: z.string(),
  spectra: z.record(z.string(), z.array(nonNeg)),
  effective_rank: z.record(z.string(), z.record(z.string(), z.number())),
  timing: z.record(z.string(), z.number()).nullable().optional(),
});

function emptyRun(job: string): Omit<Training, "summary"> {
  return {
    job,
    method: null,
    totalSteps: null,
    generation: 0,
    workers: null,
    devices: [],
    config: {},
    startedAt: null,
    steps: [],
    evals: { before: null, after: null },
    rollbacks: [],
    resyncs: 0,
    refused: 0,
    finished: null,
  };
}

/** Adds a step; a step at or before the last one (a replay after a rollback) drops those after. */
function addStep(steps: StepRecord[], rec: StepRecord) {
  while (steps.length > 0 && steps[steps.length - 1].step >= rec.step) steps.pop();
  steps.push(rec);
  if (steps.length > MAX_STEPS) {
    // Thin the older half: every other one goes, the recent ones stay exact.
    const half = Math.floor(steps.length / 2);
    const kept = steps.slice(0, half).filter((_, i) => i % 2 === 0);
    steps.splice(0, half, ...kept);
  }
}

/** The summary of a run's latest steps. */
export function summarize(steps: readonly StepRecord[], total: number | null): Summary {
  const last = steps[steps.length - 1];
  const recent = steps.slice(-20).filter((s) => !s.skipped);
  const mean = (f: (s: StepRecord) => number) =>
    recent.length ? recent.reduce((a, s) => a + f(s), 0) / recent.length : null;
  const ms = mean((s) => s.ms);
  const tokens = recent.reduce((a, s) => a + (s.tokens ?? 0), 0);
  const msAll = recent.reduce((a, s) => a + s.ms, 0);
  const done = last ? last.step + 1 : 0;
  return {
    step: done,
    total,
    loss: last?.loss ?? null,
    lr: last?.lr ?? null,
    msPerStep: ms,
    tokensPerSec: tokens > 0 && msAll > 0 ? (tokens * 1000) / msAll : null,
    etaMs: total !== null && ms !== null ? Math.max(0, total - done) * ms : null,
    bytesSent: mean((s) => s.bytes_sent),
    bytesReceived: mean((s) => s.bytes_received),
    computeMs: mean((s) => s.compute_ms),
    commMs: mean((s) => s.comm_ms),
    updateMs: mean((s) => s.update_ms),
  };
}

/**
 * Keeps the dashboard's picture of `system` up to date from its events; `listen` hands every
 * event on (as a JSON record) as it arrives.
 */
export class DashboardModel {
  readonly system: System;
  readonly #runs = new Map<string, Omit<Training, "summary">>();
  #latest: string | null = null;
  readonly #events: EventRecord[] = [];
  readonly #listeners = new Set<(r: EventRecord) => void>();
  readonly #off: () => void;
  /** Events whose data did not have the expected form (dropped). */
  malformed = 0;

  constructor(system: System) {
    this.system = system;
    this.#off = system.on((e) => {
      let r: EventRecord;
      try {
        r = eventRecord(e);
      } catch {
        return;
      }
      this.#take(r);
    });
  }

  /** Gets every event record from now on; returns the function that stops it. */
  listen(listener: (r: EventRecord) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Stops following the system. */
  close() {
    this.#off();
    this.#listeners.clear();
  }

  #take(r: EventRecord) {
    if (r.type === "app" && r.kind?.startsWith("train.")) this.#train(r);
    if (!(r.type === "app" && r.kind === "train.step")) {
      this.#events.push(r);
      if (this.#events.length > MAX_EVENTS) {
        this.#events.splice(0, this.#events.length - MAX_EVENTS);
      }
    }
    for (const l of [...this.#listeners]) {
      try {
        l(r);
      } catch (err) {
        console.error("dashboard listener failed:", err);
      }
    }
  }

  /** The run of `job`; a run that starts or steps becomes the latest (the one shown). */
  #run(job: string, current = false): Omit<Training, "summary"> {
    let run = this.#runs.get(job);
    if (!run) {
      run = emptyRun(job);
      this.#runs.set(job, run);
      if (this.#runs.size > MAX_RUNS) this.#runs.delete(this.#runs.keys().next().value!);
    }
    if (current || this.#latest === null) this.#latest = job;
    return run;
  }

  #train(r: EventRecord) {
    const d = r.data;
    const bad = () => this.malformed++;
    switch (r.kind) {
      case "train.run": {
        const p = runEvent.safeParse(d);
        if (!p.success) return bad();
        const run = this.#run(p.data.job, true);
        Object.assign(run, {
          method: p.data.method,
          totalSteps: p.data.total_steps,
          generation: p.data.generation,
          workers: p.data.workers,
          devices: p.data.devices,
          config: p.data.config,
          startedAt: p.data.started_at,
        });
        for (const s of p.data.steps ?? []) addStep(run.steps, s);
        return;
      }
      case "train.step": {
        const p = stepEvent.safeParse(d);
        if (!p.success) return bad();
        const run = this.#run(p.data.job, true);
        run.totalSteps = p.data.total_steps;
        run.generation = p.data.generation;
        addStep(run.steps, p.data.record);
        return;
      }
      case "train.rollback": {
        const p = rollbackEvent.safeParse(d);
        if (!p.success) return bad();
        const run = this.#run(p.data.job);
        run.generation = p.data.generation;
        run.rollbacks.push({
          time: r.time,
          generation: p.data.generation,
          next_step: p.data.next_step,
          cause: p.data.cause,
        });
        while (run.steps.length > 0 && run.steps[run.steps.length - 1].step >= p.data.next_step) {
          run.steps.pop();
        }
        return;
      }
      case "train.resync": {
        const p = resyncEvent.safeParse(d);
        if (!p.success) return bad();
        this.#run(p.data.job).resyncs = p.data.resyncs;
        return;
      }
      case "train.refused": {
        const p = refusedEvent.safeParse(d);
        if (!p.success) return bad();
        this.#run(p.data.job).refused = p.data.total;
        return;
      }
      case "train.eval": {
        const p = evalEvent.safeParse(d);
        if (!p.success) return bad();
        this.#run(p.data.job).evals[p.data.phase] = p.data.score;
        return;
      }
      case "train.finished": {
        const p = finishedEvent.safeParse(d);
        if (!p.success) return bad();
        this.#run(p.data.job).finished = {
          spectra: p.data.spectra,
          effective_rank: p.data.effective_rank,
          timing: p.data.timing ?? null,
        };
        return;
      }
    }
  }

  /** The state now; `steps: false` leaves the latest run's steps out (for periodic updates). */
  snapshot(o: { steps?: boolean } = {}): DashboardState {
    const latest = this.#latest === null ? undefined : this.#runs.get(this.#latest);
    const training: Training | null = latest
      ? {
        ...latest,
        steps: o.steps === false ? [] : [...latest.steps],
        rollbacks: [...latest.rollbacks],
        summary: summarize(latest.steps, latest.totalSteps),
      }
      : null;
    const earlier = [...this.#runs.values()].filter((r) => r.job !== this.#latest).map((r) => {
      const finite = r.steps.slice(-Math.max(1, Math.ceil(r.steps.length / 10)))
        .map((s) => s.loss).filter((l): l is number => l !== null && Number.isFinite(l));
      return {
        job: r.job,
        method: r.method,
        steps: r.steps.length,
        finalLoss: finite.length ? finite.reduce((a, b) => a + b, 0) / finite.length : null,
        finished: r.finished !== null,
      };
    });
    return {
      version: 1,
      time: Date.now(),
      connected: !this.system.nc.isClosed(),
      cluster: this.system.introspect(),
      training,
      earlier,
      events: [...this.#events],
    };
  }
}

/**
 * The fine-tuning job: starts (or joins) the actor system, hosts the Driver in this process,
 * runs it step by step with a progress display, and writes the outputs of docs/architecture.md §9. With
 * `--compare` it runs every registered method one after another on the same workers and data.
 * @module
 */
import { DomainError } from "../core/errors.ts";
import { init, natsEnvCredentials, type System, type z } from "../runtime/mod.ts";
import { replicateObjectStore } from "./store_replicas.ts";
import type { EvalScore } from "../train/eval/score.ts";
import { formatScoreTable } from "../train/eval/score.ts";
import { FINETUNE_FLAGS, type FinetuneOptions, FlagError, METHODS } from "../train/cli/options.ts";
import { validateOptionsForModel } from "../train/cli/model_checks.ts";
import { describeRecipe, type Recipe, recipeLines } from "../train/cli/recipe.ts";
import {
  COMPANION_FILES,
  INDEX_FILE,
  inspectModelFolder,
  SHARD_NAME,
  SINGLE_FILE,
} from "../model/safetensors.ts";
import { Progress, type ProgressWriter } from "../train/cli/progress.ts";
import {
  type evalSplitSchema,
  type RunReport,
  writeJsonAtomic,
  writeReportJson,
} from "../train/report/report.ts";
import { renderCompareHtml, renderReportHtml } from "../train/report/html.ts";
import { compareJson, compareTable } from "../train/report/compare_table.ts";
import { checkAdapterFolders, exportRunAdapter } from "../train/export/run.ts";
import { Driver } from "./driver.ts";
import { probeAdapter } from "../gpu/mod.ts";
import type { LlamaConfig } from "../model/config.ts";
import {
  checkMemoryPlan,
  DEFAULT_LIMITS,
  type MemoryPlan,
  memoryPlan,
  type MemoryPlanInput,
  type PlanLimits,
  planLines,
} from "../train/plan/memory.ts";

/** The output folder is not usable (non-empty without --overwrite/--resume, not a folder...). */
export class OutputFolderError extends DomainError {
  static override readonly code: string = "OUTPUT_FOLDER";
}

/** What the job writes into `--out`; `--overwrite` removes only these (and the model's shards). */
const OUTPUTS = [
  "config.json",
  SINGLE_FILE,
  INDEX_FILE,
  ...COMPANION_FILES,
  "report.json",
  "report.html",
  "compare.json",
  "compare.html",
  "checkpoints",
  ...METHODS,
];

function isOutput(name: string): boolean {
  return OUTPUTS.includes(name) || SHARD_NAME.test(name);
}

async function prepareOut(o: FinetuneOptions): Promise<void> {
  let entries: string[] = [];
  try {
    const st = await Deno.stat(o.out);
    if (!st.isDirectory) throw new OutputFolderError(`--out ${o.out} exists and is not a folder`);
    for await (const e of Deno.readDir(o.out)) entries.push(e.name);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (o.resume) {
    if (entries.length === 0) {
      throw new OutputFolderError(`--resume ${o.resume}: the folder is empty or missing`);
    }
    return;
  }
  if (entries.length > 0) {
    if (!o.overwrite) {
      throw new OutputFolderError(
        `--out ${o.out} is not empty; pass --overwrite to replace its outputs, or --resume ${o.out} ` +
          `to continue its run`,
      );
    }
    entries = entries.filter(isOutput);
    for (const e of entries) await Deno.remove(`${o.out}/${e}`, { recursive: true });
  }
  await Deno.mkdir(o.out, { recursive: true });
}

/**
 * The checks that need only the files: the model folder from its headers (shards against the
 * index, dtypes, shapes against the config, truncation), the config against the flags, and that
 * the data files exist. They run before anything is created or started.
 */
async function checkInputs(o: FinetuneOptions): Promise<LlamaConfig> {
  const { config } = await inspectModelFolder(o.model);
  validateOptionsForModel(o, config);
  for (const [flag, path] of [["--data", o.data], ["--eval", o.eval]] as const) {
    if (path === null) continue;
    try {
      if (!(await Deno.stat(path)).isFile) {
        throw new FlagError(`${flag} ${path} is not a file`, flag.slice(2));
      }
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new FlagError(`${flag} ${path}: no such file`, flag.slice(2));
      }
      throw e;
    }
  }
  await checkAdapterFolders(o, METHODS);
  return config;
}

/**
 * The limits the plan is checked against: the host's memory, and on a local cluster the limits
 * of the adapter its workers will open (a CPU one keeps its buffers in host memory). With
 * `--nats` the workers' devices are elsewhere: only the host is checked.
 */
async function planLimits(
  o: FinetuneOptions,
  given?: Partial<PlanLimits>,
  io?: JobIo,
): Promise<PlanLimits> {
  const base: PlanLimits = {
    maxBufferSize: Infinity,
    maxStorageBufferBindingSize: DEFAULT_LIMITS.maxStorageBufferBindingSize,
    hostMemory: Deno.systemMemoryInfo().total,
  };
  if (!o.nats) {
    let found: Awaited<ReturnType<typeof probeAdapter>> = null;
    let why = "WebGPU offers no adapter here";
    try {
      found = await probeAdapter();
    } catch (e) {
      why = `asking for an adapter failed (${(e as Error).message})`;
    }
    if (found) {
      base.maxBufferSize = found.limits.maxBufferSize;
      base.maxStorageBufferBindingSize = found.limits.maxStorageBufferBindingSize;
      base.minStorageBufferOffsetAlignment = found.limits.minStorageBufferOffsetAlignment;
      base.sharedHost = found.isCpu;
    } else {
      // The workers will report their own failure; the plan says what it could not check.
      io?.log(`memory plan: ${why}; only the host's memory is checked`);
    }
  }
  return { ...base, ...given };
}

/** What the memory plan of a run of `o` (as method `method`) on a model of `config` counts. */
export function planInput(
  o: FinetuneOptions,
  config: LlamaConfig,
  limits: PlanLimits,
  method: FinetuneOptions["method"] = o.method,
): MemoryPlanInput {
  return {
    config,
    method,
    workers: o.workers,
    rank: o.rank,
    targets: o.targets,
    microBatch: o.microBatch,
    maxMicroBatches: o.batchSize / (o.workers * o.microBatch),
    seqLen: o.seqLen,
    svd: o.svd,
    weightsDtype: o.weightsDtype,
    recompute: o.recompute,
    loadVia: o.loadVia,
    svdThreads: o.svdThreads,
    svdDevice: o.svdDevice,
    privateServer: !o.nats,
    limits,
  };
}

/** The memory plan of the run (every method's with --compare); throws MemoryPlanError. */
async function planRun(
  o: FinetuneOptions,
  config: LlamaConfig,
  given?: Partial<PlanLimits>,
  io?: JobIo,
): Promise<MemoryPlan> {
  const limits = await planLimits(o, given, io);
  const planOf = (method: FinetuneOptions["method"]) =>
    memoryPlan(planInput(o, config, limits, method));
  for (const m of o.compare ? METHODS : [o.method]) checkMemoryPlan(planOf(m), limits);
  return planOf(o.method);
}

export interface JobIo {
  /** A line for the user (printed above the progress bar). */
  log(line: string): void;
  /** Whether stderr is a terminal (progress redraws one line). */
  isTty?: boolean;
  /**
   * The flags given on the command line: their values are marked "flag" in the recipe. Any other
   * value that differs from the model's recipe is marked as set by the caller.
   */
  given?: ReadonlySet<string>;
  /** Where the progress display goes (default stderr). */
  progress?: ProgressWriter;
  /**
   * Called once the actor system is up, before any work, e.g. to watch its events or serve a
   * dashboard of it; the job waits for it, and stops if it throws.
   */
  onSystem?(system: System): void | Promise<void>;
  /** Device and host limits for the memory plan (default: this host's and its adapter's). */
  limits?: Partial<PlanLimits>;
}

/**
 * Starts the local cluster (K node processes with one GPU slot each; one that dies is replaced,
 * so that its worker can restart on this host) or joins `--nats`.
 */
export async function startSystem(
  o: FinetuneOptions,
  log: (line: string) => void = () => {},
): Promise<System> {
  if (o.nats) {
    // Secrets come from the environment (NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED,
    // NATS_CREDS, NATS_TLS_*), as for `deno task node`, never from flags in `ps`; or from the
    // URL itself (`nats://user:pass@host`).
    const system = await init({ nats: o.nats.split(","), ...natsEnvCredentials() });
    try {
      await replicateObjectStore(system, o.storeReplicas, log);
    } catch (e) {
      await system.shutdown();
      throw e;
    }
    return system;
  }
  // Without a real GPU, K lavapipe instances share the CPU: one thread each avoids oversubscribing.
  const threads = Deno.env.get("LP_NUM_THREADS") ??
    String(Math.max(1, Math.floor(navigator.hardwareConcurrency / o.workers)));
  return await init({
    nodes: Array.from({ length: o.workers }, () => ({
      resources: { gpu: 1 },
      env: { LP_NUM_THREADS: threads },
    })),
    replaceNodes: true,
  });
}

/**
 * A progress display of the adapter init (the SVDs), from the driver's `train.init` events of
 * `job` ({done, total} after each matrix), while its setup runs. Returns the function that ends it.
 */
function showInitProgress(system: System, job: string, method: string, io: JobIo): () => void {
  let progress: Progress | null = null;
  let done = 0;
  const stop = system.on((e) => {
    if (e.type !== "app" || e.event.kind !== "train.init") return;
    const d = e.event.data as { job?: unknown; done?: unknown; total?: unknown } | null;
    if (d?.job !== job || !Number.isInteger(d.done) || !Number.isInteger(d.total)) return;
    const total = d.total as number;
    if (total < 1 || (d.done as number) > total || (progress && progress.total !== total)) return;
    progress ??= new Progress({
      total,
      label: `${method} init: SVD`,
      isTty: io.isTty,
      out: io.progress,
    });
    // Events may arrive out of order: the count only goes up.
    done = Math.max(done, d.done as number);
    progress.update(done);
  });
  return () => {
    stop();
    progress?.done();
  };
}

/** Runs one method's job on `system` and writes its folder. */
export async function runOne(
  system: System,
  o: FinetuneOptions,
  io: JobIo,
  baseEval: RunReport["eval"]["before"] = null,
  recipe: Recipe = describeRecipe(o, io.given),
  plan?: MemoryPlan,
): Promise<RunReport> {
  const job = `${o.method.replace(/[^a-z]/g, "")}${crypto.randomUUID().slice(0, 8)}`;
  // The report's types are narrower than its (loose) schema's; the schema checks it on arrival.
  const base = baseEval as z.input<typeof evalSplitSchema> | null;
  const driver = await system.spawn(Driver, { job, options: o, baseEval: base }, {
    node: "local",
    maxRestarts: 0,
    initTimeoutMs: 60_000,
  });
  const long = { timeoutMs: 24 * 3600_000 };
  try {
    const endInit = showInitProgress(system, job, o.method, io);
    const setup = await driver.setup({}, long).finally(endInit);
    setup.log.forEach(io.log);
    io.log(
      `${o.method}: ${setup.totalSteps} steps on ${setup.devices.length} workers (${
        setup.devices[0]
      })`,
    );
    const progress = new Progress({
      total: setup.totalSteps,
      label: o.method,
      isTty: io.isTty,
      start: setup.nextStep,
      out: io.progress,
    });
    let next = setup.nextStep;
    while (next < setup.totalSteps) {
      const r = await driver.step({}, long);
      r.log.forEach((l) => progress.log(l));
      next = r.nextStep;
      if (r.record) {
        progress.update(next, {
          loss: r.record.loss ?? NaN,
          tokensPerSec: (r.record.tokens ?? 0) / (r.record.ms / 1000),
        });
      }
    }
    progress.done();
    const fin = await driver.finish({}, long);
    fin.log.forEach(io.log);
    const report: RunReport = {
      ...(fin.report as RunReport),
      recipe,
      ...(plan ? { memory_plan: plan } : {}),
    };
    await writeReportJson(`${o.out}/report.json`, report);
    await Deno.writeTextFile(`${o.out}/report.html`, renderReportHtml(report));
    if (o.exportAdapter !== null) return await exportRunAdapter(o, report, o.exportAdapter, io.log);
    return report;
  } finally {
    await system.stop(driver).catch(() => {});
  }
}

function evalTable(report: RunReport): string {
  const cols: Record<string, EvalScore> = {};
  if (report.eval.before) cols.before = report.eval.before as EvalScore;
  if (report.eval.after) cols.after = report.eval.after as EvalScore;
  return Object.keys(cols).length ? formatScoreTable(cols) : "";
}

/**
 * The whole job: one method, or `--compare` for every method. Returns the reports written.
 * `--dashboard` is the caller's to serve (`dashboard/`, through `io.onSystem`); secrets among the
 * options (`--dashboard-token`) never reach the Driver.
 */
export async function runFinetune(options: FinetuneOptions, io: JobIo): Promise<RunReport[]> {
  const o = FINETUNE_FLAGS.redact(options);
  const config = await checkInputs(o);
  const plan = await planRun(o, config, io.limits, io);
  planLines(plan).forEach((l) => io.log(l));
  // The recipe of --method: with --compare every method runs with it (same hyper-parameters).
  const recipe = describeRecipe(o, io.given);
  recipeLines(o, recipe).forEach((l) => io.log(l));
  await prepareOut(o);
  const system = await startSystem(o, io.log);
  try {
    await io.onSystem?.(system);
    if (!o.compare) {
      const report = await runOne(system, o, io, null, recipe, plan);
      const table = evalTable(report);
      if (table) io.log(table);
      io.log(`wrote ${o.out}/ (model, report.json, report.html)`);
      return [report];
    }
    const reports: RunReport[] = [];
    for (const method of METHODS) {
      const sub = {
        ...o,
        method,
        compare: false,
        out: `${o.out}/${method}`,
        exportAdapter: o.exportAdapter === null ? null : `${o.exportAdapter}/${method}`,
      };
      await Deno.mkdir(sub.out, { recursive: true });
      const subPlan = await planRun(sub, config, io.limits);
      reports.push(
        await runOne(system, sub, io, reports[0]?.eval.before ?? null, recipe, subPlan),
      );
    }
    io.log(compareTable(reports));
    await writeJsonAtomic(`${o.out}/compare.json`, compareJson(reports));
    await Deno.writeTextFile(`${o.out}/compare.html`, renderCompareHtml(reports));
    io.log(`wrote ${o.out}/ (one folder per method, compare.json, compare.html)`);
    return reports;
  } finally {
    await system.shutdown();
  }
}

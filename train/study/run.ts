/**
 * The resumable study runner: plans the grid, runs what has no result yet through the product's
 * fine-tuning job (handed in by the caller: actors/ sits above train/), writes one result per run
 * into `<out>/results/<id>.json` atomically, and rebuilds study.json and study.html from all
 * results. Interrupted, it starts again where it stopped: a run with a result is never redone, a
 * run without one is redone from its start (`--overwrite` of its folder).
 * @module
 */
import { type FinetuneOptions, parseFinetuneArgs } from "../cli/options.ts";
import { methodFigures } from "../report/compare_table.ts";
import { type RunReport, writeJsonAtomic } from "../report/report.ts";
import { comparisons, points, tuning } from "./analyze.ts";
import {
  type BudgetModel,
  formatDuration,
  measuredMeanRunSeconds,
  totalSeconds,
} from "./budget.ts";
import { prepareTask, type TaskData } from "./data.ts";
import { StudyError } from "./errors.ts";
import { renderStudyHtml } from "./html.ts";
import {
  checkSettings,
  effectiveLr,
  mainRuns,
  type RunSpec,
  type StudySettings,
  type StudyTask,
  tuneRuns,
} from "./plan.ts";
import {
  type RunResult,
  runResultSchema,
  runSpecSchema,
  settingsSchema,
  type StoredSettings,
  type StudyJson,
  studyJsonSchema,
} from "./schema.ts";

export interface StudyOptions extends StudySettings {
  out: string;
  model: string;
  evalPerTask: number;
  budget: BudgetModel;
}

export interface StudyIo {
  log(line: string): void;
  /** Runs one fine-tuning job (the product's `runFinetune`) and returns its report. */
  finetune(options: FinetuneOptions): Promise<RunReport>;
}

/** What a call did: the runs it trained and the ones it found finished. */
export interface StudyOutcome {
  study: StudyJson;
  trained: string[];
  skipped: string[];
}

/** The finetune flags of one run. */
export function runArgs(o: StudyOptions, r: RunSpec, data: TaskData, dir: string): string[] {
  const args = [
    "--model",
    o.model,
    "--data",
    data.train,
    "--eval",
    r.evalOn === "valid" ? data.valid : data.test,
    "--method",
    r.method,
    "--workers",
    String(o.workers),
    "--lr",
    String(effectiveLr(r)),
    "--seed",
    String(r.seed),
    "--max-steps",
    String(o.steps),
    "--batch-size",
    String(r.batchSize),
    "--aggregate",
    r.aggregate,
    "--eval-per-task",
    String(o.evalPerTask),
    "--checkpoint-every",
    "0",
    "--out",
    dir,
    "--overwrite",
  ];
  if (r.method !== "full") args.push("--rank", String(r.rank));
  if (r.sliceScale !== "svd") args.push("--slice-scale", r.sliceScale);
  if (r.mute !== "exact") {
    args.push("--mute", String(r.mute), "--mute-rescale", r.muteRescale);
  }
  return args;
}

async function readResults(dir: string): Promise<Map<string, RunResult>> {
  const out = new Map<string, RunResult>();
  try {
    for await (const e of Deno.readDir(dir)) {
      if (!e.isFile || !e.name.endsWith(".json")) continue;
      const path = `${dir}/${e.name}`;
      let parsed;
      try {
        parsed = runResultSchema.safeParse(JSON.parse(await Deno.readTextFile(path)));
      } catch (err) {
        throw new StudyError(`${path} is not JSON (${(err as Error).message}); delete it to redo`);
      }
      if (!parsed.success) {
        throw new StudyError(`${path} is not a run result (${parsed.error.message}); delete it`);
      }
      out.set(parsed.data.spec.id, parsed.data);
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out;
}

/** Settings that the folder must keep: another grid or other data means another folder. */
async function checkFolder(path: string, now: StoredSettings): Promise<void> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    await writeJsonAtomic(path, now);
    return;
  }
  const parsed = settingsSchema.safeParse(JSON.parse(text));
  if (!parsed.success) throw new StudyError(`${path} is not a study's settings; use another --out`);
  for (const k of Object.keys(now) as (keyof StoredSettings)[]) {
    if (JSON.stringify(parsed.data[k]) !== JSON.stringify(now[k])) {
      throw new StudyError(
        `${path}: this folder's study has ${k} = ${JSON.stringify(parsed.data[k])}, this call ` +
          `${JSON.stringify(now[k])}; continue it with the same flags or use another --out`,
      );
    }
  }
}

/** Field by field, in the schema's order (a parsed result's keys come in that order). */
function sameSpec(a: unknown, b: unknown): boolean {
  return JSON.stringify(runSpecSchema.parse(a)) === JSON.stringify(runSpecSchema.parse(b));
}

/** Runs the study (or its remaining runs) and rewrites study.json and study.html. */
export async function runStudy(o: StudyOptions, io: StudyIo): Promise<StudyOutcome> {
  checkSettings(o);
  await Deno.mkdir(`${o.out}/results`, { recursive: true });
  const data = new Map<StudyTask, TaskData>();
  for (const t of o.tasks) data.set(t, await prepareTask(o.out, t));
  const stored = storedSettings(o, data);
  await checkFolder(`${o.out}/settings.json`, stored);
  const results = await readResults(`${o.out}/results`);
  const trained: string[] = [], skipped: string[] = [];

  const ensure = async (r: RunSpec, index: number, total: number) => {
    const done = results.get(r.id);
    if (done) {
      if (!sameSpec(done.spec, r)) {
        throw new StudyError(`results/${r.id}.json was made with other settings; delete it`);
      }
      skipped.push(r.id);
      return;
    }
    io.log(`study: run ${index + 1}/${total} ${r.id}`);
    const dir = `${o.out}/runs/${r.id}`;
    const { options } = parseFinetuneArgs(runArgs(o, r, data.get(r.task)!, dir));
    const t0 = performance.now();
    const report = await io.finetune(options);
    const wall = performance.now() - t0;
    const result = toResult(r, report, wall);
    await writeJsonAtomic(`${o.out}/results/${r.id}.json`, result);
    results.set(r.id, result);
    trained.push(r.id);
    // The model and its checkpoint are not needed once the figures are kept (a study writes
    // hundreds of runs); report.json and report.html stay.
    for (const f of ["model.safetensors", "checkpoints"]) {
      await Deno.remove(`${dir}/${f}`, { recursive: true }).catch((e) => {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      });
    }
  };

  const tune = tuneRuns(o);
  const firstPlan = mainRuns(o, new Map());
  const total = tune.length + firstPlan.length;
  io.log(
    `study: ${total} runs planned (${tune.length} tuning), ${results.size} finished; estimate ` +
      formatDuration(totalSeconds([...tune, ...firstPlan], o.steps, o.budget)) + " in all",
  );
  for (const [i, r] of tune.entries()) await ensure(r, i, total);
  const { best } = tuning(o, results);
  const main = mainRuns(o, best);
  for (const [i, r] of main.entries()) await ensure(r, tune.length + i, total);

  const study = buildStudyJson(o, stored, results);
  await writeJsonAtomic(`${o.out}/study.json`, study);
  await Deno.writeTextFile(`${o.out}/study.html`, renderStudyHtml(study));
  io.log(`study: wrote ${o.out}/study.json and study.html (${trained.length} runs trained now)`);
  return { study, trained, skipped };
}

function storedSettings(o: StudyOptions, data: ReadonlyMap<StudyTask, TaskData>): StoredSettings {
  return {
    quick: o.quick,
    tasks: [...o.tasks],
    methods: [...o.methods],
    parts: [...o.parts],
    steps: o.steps,
    seeds: o.seeds,
    workers: o.workers,
    batchSize: o.batchSize,
    evalPerTask: o.evalPerTask,
    model: o.model,
    data: Object.fromEntries([...data].map(([t, d]) => [t, d.sha256])),
  };
}

function toResult(r: RunSpec, report: RunReport, wallMs: number): RunResult {
  const f = methodFigures(report);
  if (!f.accuracy) {
    throw new StudyError(`${r.id}: the run's report has no evaluation after training`);
  }
  return runResultSchema.parse({
    spec: r,
    accuracy: f.accuracy.overall,
    tasks: f.accuracy.tasks,
    final_loss: f.final_loss,
    total_rank: r.method === "full" ? null : f.rank_bound,
    optimizer_bytes_per_worker: f.optimizer_bytes_per_worker,
    steps: f.steps,
    step_ms_mean: f.step_ms_mean,
    wall_ms: wallMs,
    finished_at: new Date().toISOString(),
  });
}

/** study.json from the results so far (a partial study lists what it has). */
export function buildStudyJson(
  o: StudyOptions,
  stored: StoredSettings,
  results: ReadonlyMap<string, RunResult>,
): StudyJson {
  const { rows } = tuning(o, results);
  const ps = points(results.values());
  const planned = [...tuneRuns(o), ...mainRuns(o, new Map())];
  return studyJsonSchema.parse({
    settings: stored,
    runs: { planned: planned.length, finished: results.size },
    tuning: rows,
    points: ps,
    comparisons: comparisons(o, ps),
    budget: {
      planned_runs: planned.length,
      estimated_s: totalSeconds(planned, o.steps, o.budget),
      step_s: o.budget.stepSeconds,
      overhead_s: o.budget.overheadSeconds,
      measured_mean_run_s: measuredMeanRunSeconds([...results.values()]),
    },
  });
}

/**
 * The study's grid (README, "When to use HD-PiSSA"): which runs there are, each with an id that
 * names everything that decides it, so that a finished run is found again by its id on restart.
 *
 * - tune: every method at one rank, each rate of its grid, the first seed, scored on the
 *   validation split (taken from the training file; never the test file). A grid of one rate
 *   has nothing to choose and runs nothing.
 * - rank: LoRA and PiSSA at r = 4…32, HD-PiSSA at r = 1…8 (total rank 2Kr = 8…64), full, every
 *   seed, at the method's tuned rate, scored on the test file.
 * - controls (on the capacity task): HD-PiSSA with `--aggregate sum`, with mean and the rate ×K,
 *   with `--slice-scale equal`, and HD-PiSSA and PiSSA at four times the global batch.
 * - mute: HD-PiSSA with γ ∈ {1e-2, 1e-8, 1e-16, 1e-32}, rescaled by 1/γ or by the fixed 1e16,
 *   every seed.
 *
 * All runs of a seed share the data order and the number of steps.
 * @module
 */
import { StudyError } from "./errors.ts";

export const STUDY_TASKS = ["bench", "codes"] as const;
export type StudyTask = typeof STUDY_TASKS[number];
export const STUDY_METHODS = ["lora", "pissa", "hd-pissa", "full"] as const;
export type StudyMethod = typeof STUDY_METHODS[number];
export const STUDY_PARTS = ["rank", "controls", "mute"] as const;
export type StudyPart = typeof STUDY_PARTS[number];

/** What the flags decide about the grid. */
export interface StudySettings {
  quick: boolean;
  tasks: readonly StudyTask[];
  methods: readonly StudyMethod[];
  parts: readonly StudyPart[];
  /** Optimizer steps of every run (batch ×4 controls too: same steps, more data). */
  steps: number;
  seeds: number;
  workers: number;
  batchSize: number;
}

export type Phase = "tune" | "rank" | "control" | "mute";

/** One fine-tuning run of the study. */
export interface RunSpec {
  id: string;
  phase: Phase;
  task: StudyTask;
  method: StudyMethod;
  /** Per-worker rank (full: 0, the flag is unused). */
  rank: number;
  /** The peak rate; null until the method's tuning is done (the dry run shows such runs). */
  lr: number | null;
  /** The tuned rate is multiplied by this (the "mean with lr × K" control). */
  lrFactor: number;
  seed: number;
  evalOn: "valid" | "test";
  /** The curve or bar the run belongs to in the tables and the plot. */
  series: string;
  aggregate: "mean" | "sum";
  sliceScale: "svd" | "equal";
  batchSize: number;
  mute: "exact" | number;
  muteRescale: "inverse" | "fixed";
}

/** Per-worker ranks of the rank curves. */
export function ranksOf(method: StudyMethod, quick: boolean): number[] {
  if (method === "full") return [0];
  if (method === "hd-pissa") return quick ? [1] : [1, 2, 4, 8];
  return quick ? [4] : [4, 8, 16, 32];
}

/** The rank a method's rate is tuned at (the middle of its curve; full: none). */
export function tuneRank(method: StudyMethod, quick: boolean): number {
  if (method === "full") return 0;
  if (method === "hd-pissa") return quick ? 1 : 2;
  return quick ? 4 : 8;
}

/**
 * Rates tried per method. The adapters' grid spans 5e-3 (the shipped model's default) to 4e-2 in
 * steps of 2: a first pass on codes found both LoRA's and PiSSA's best rate at the top of a
 * 2e-3…1e-2 grid. HD-PiSSA's grid is the adapters' grid × K: with `--aggregate mean` each of the
 * K slices moves 1/K as far per step as PiSSA's single adapter under Adam, so this grid gives each
 * slice the same range of steps per direction (at the adapters' grid HD-PiSSA stored no fact in
 * that first pass). Full fine-tuning moves every weight and gets a grid a factor lower. `--quick`
 * has one rate per method, chosen the same way.
 */
export function lrGrid(method: StudyMethod, quick: boolean, workers: number): number[] {
  if (method === "full") return quick ? [2e-3] : [5e-4, 2e-3, 5e-3];
  const adapters = quick ? [1e-2] : [5e-3, 1e-2, 2e-2, 4e-2];
  // Rounded so that a rate prints (and names its run) as written, not as 0.12000000000000001.
  return method === "hd-pissa"
    ? adapters.map((lr) => Number((lr * workers).toPrecision(6)))
    : adapters;
}

/** The HD-PiSSA rank the controls and the mute ablation use. */
export function controlRank(quick: boolean): number {
  return quick ? 1 : 4;
}

export const MUTE_GAMMAS: readonly number[] = [1e-2, 1e-8, 1e-16, 1e-32];

/** The capacity task when it is studied, else the first task: where controls and mute run. */
export function controlTask(s: StudySettings): StudyTask {
  return s.tasks.includes("codes") ? "codes" : s.tasks[0];
}

function idOf(r: Omit<RunSpec, "id">): string {
  const parts = [r.phase, r.task, r.method, `r${r.rank}`, `lr${r.lr ?? "tuned"}`, `s${r.seed}`];
  if (r.lrFactor !== 1) parts.push(`lrx${r.lrFactor}`);
  if (r.aggregate !== "mean") parts.push(`agg-${r.aggregate}`);
  if (r.sliceScale !== "svd") parts.push(`slice-${r.sliceScale}`);
  if (r.batchSize !== 16) parts.push(`b${r.batchSize}`);
  if (r.mute !== "exact") parts.push(`mute${r.mute}-${r.muteRescale}`);
  return parts.join("_");
}

function run(s: StudySettings, r: Partial<RunSpec> & Pick<RunSpec, "phase" | "task" | "method">) {
  const spec: Omit<RunSpec, "id"> = {
    rank: 0,
    lr: null,
    lrFactor: 1,
    seed: 0,
    evalOn: "test",
    series: r.method,
    aggregate: "mean",
    sliceScale: "svd",
    batchSize: s.batchSize,
    mute: "exact",
    muteRescale: "inverse",
    ...r,
  };
  return { id: idOf(spec), ...spec };
}

/** Tuning runs: known before anything has run. */
export function tuneRuns(s: StudySettings): RunSpec[] {
  const out: RunSpec[] = [];
  for (const task of s.tasks) {
    for (const method of s.methods) {
      const grid = lrGrid(method, s.quick, s.workers);
      if (grid.length < 2) continue;
      for (const lr of grid) {
        out.push(run(s, {
          phase: "tune",
          task,
          method,
          rank: tuneRank(method, s.quick),
          lr,
          evalOn: "valid",
        }));
      }
    }
  }
  return out;
}

/** Key of a tuned rate: per task and method. */
export function tunedKey(task: StudyTask, method: StudyMethod): string {
  return `${task}/${method}`;
}

/**
 * The runs after tuning. `tuned` maps `tunedKey` to the chosen rate; a method whose tuning is
 * unfinished gets `lr: null` (its runs can be listed but not started).
 */
export function mainRuns(s: StudySettings, tuned: ReadonlyMap<string, number>): RunSpec[] {
  const out: RunSpec[] = [];
  const lrOf = (task: StudyTask, method: StudyMethod) => {
    const grid = lrGrid(method, s.quick, s.workers);
    return grid.length === 1 ? grid[0] : tuned.get(tunedKey(task, method)) ?? null;
  };
  const seeds = Array.from({ length: s.seeds }, (_, i) => i);
  if (s.parts.includes("rank")) {
    for (const task of s.tasks) {
      for (const method of s.methods) {
        for (const rank of ranksOf(method, s.quick)) {
          for (const seed of seeds) {
            out.push(run(s, { phase: "rank", task, method, rank, lr: lrOf(task, method), seed }));
          }
        }
      }
    }
  }
  const task = controlTask(s);
  const rank = controlRank(s.quick);
  const hasHd = s.methods.includes("hd-pissa");
  if (s.parts.includes("controls") && hasHd) {
    const hd = { phase: "control" as const, task, method: "hd-pissa" as const, rank };
    const lr = lrOf(task, "hd-pissa");
    const controls: Partial<RunSpec>[] = s.quick
      ? [{ aggregate: "sum", series: "hd-pissa sum" }]
      : [
        { aggregate: "sum", series: "hd-pissa sum" },
        { lrFactor: s.workers, series: "hd-pissa mean lr×K" },
        { sliceScale: "equal", series: "hd-pissa slice-scale equal" },
        { batchSize: 4 * s.batchSize, series: "hd-pissa batch×4" },
      ];
    for (const c of controls) {
      for (const seed of seeds) out.push(run(s, { ...hd, lr, seed, ...c }));
    }
    if (!s.quick && s.methods.includes("pissa")) {
      for (const seed of seeds) {
        out.push(run(s, {
          phase: "control",
          task,
          method: "pissa",
          rank,
          lr: lrOf(task, "pissa"),
          seed,
          batchSize: 4 * s.batchSize,
          series: "pissa batch×4",
        }));
      }
    }
  }
  if (s.parts.includes("mute") && hasHd) {
    const gammas = s.quick ? [1e-32] : MUTE_GAMMAS;
    for (const mute of gammas) {
      for (const muteRescale of ["inverse", "fixed"] as const) {
        for (const seed of seeds) {
          out.push(run(s, {
            phase: "mute",
            task,
            method: "hd-pissa",
            rank,
            lr: lrOf(task, "hd-pissa"),
            seed,
            mute,
            muteRescale,
            series: `mute ${muteRescale}`,
          }));
        }
      }
    }
  }
  return out;
}

/** Checks the settings make a grid at all. */
export function checkSettings(s: StudySettings): void {
  if (s.tasks.length === 0) throw new StudyError("the study needs at least one task");
  if (s.methods.length === 0) throw new StudyError("the study needs at least one method");
  const ids = new Set<string>();
  for (const r of [...tuneRuns(s), ...mainRuns(s, new Map())]) {
    if (ids.has(r.id)) throw new StudyError(`two runs share the id ${r.id}`);
    ids.add(r.id);
  }
}

/** The rate a run trains with: the tuned rate times its factor. */
export function effectiveLr(r: RunSpec): number {
  if (r.lr === null) throw new StudyError(`${r.id}: the method's rate is not tuned yet`);
  return r.lr * r.lrFactor;
}

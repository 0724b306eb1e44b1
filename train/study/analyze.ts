/**
 * From the finished runs to `study.json`'s figures: the tuned rate per task and method, the
 * points of the curves (mean ± sd over seeds) and the paired differences that answer the study's
 * questions. Pure: the same results give the same study.json.
 * @module
 */
import { lrGrid, type StudyMethod, type StudySettings, type StudyTask, tuneRank } from "./plan.ts";
import { controlRank, controlTask, tunedKey, tuneRuns } from "./plan.ts";
import type { Comparison, Point, RunResult, StudyJson } from "./schema.ts";
import { pairedDifference, summarize } from "./stats.ts";

export type TuningRow = StudyJson["tuning"][number];

/**
 * The rate with the best validation accuracy per task and method, once all of its grid has run
 * (ties go to the earlier, smaller rate). Methods still tuning have `best: null`.
 */
export function tuning(
  s: StudySettings,
  results: ReadonlyMap<string, RunResult>,
): { rows: TuningRow[]; best: Map<string, number> } {
  const rows: TuningRow[] = [];
  const best = new Map<string, number>();
  const runs = tuneRuns(s);
  for (const task of s.tasks) {
    for (const method of s.methods) {
      const grid = lrGrid(method, s.quick, s.workers);
      if (grid.length < 2) continue;
      const cells = grid.map((lr) => {
        const r = runs.find((x) =>
          x.task === task && x.method === method && x.lr === lr &&
          x.rank === tuneRank(method, s.quick)
        );
        const res = r ? results.get(r.id) : undefined;
        return { lr, valid_accuracy: res ? res.accuracy : null };
      });
      let chosen: number | null = null;
      if (cells.every((c) => c.valid_accuracy !== null)) {
        let top = cells[0];
        for (const c of cells) if (c.valid_accuracy! > top.valid_accuracy!) top = c;
        chosen = top.lr;
        best.set(tunedKey(task, method), chosen);
      }
      rows.push({ task, method, grid: cells, best: chosen });
    }
  }
  return { rows, best };
}

/** The curves' points: the finished runs (not tuning) grouped over seeds. */
export function points(results: Iterable<RunResult>): Point[] {
  const groups = new Map<string, RunResult[]>();
  for (const r of results) {
    if (r.spec.phase === "tune") continue;
    const k = [r.spec.task, r.spec.phase, r.spec.series, r.spec.rank, String(r.spec.mute)].join(
      "|",
    );
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  const out: Point[] = [];
  for (const rs of groups.values()) {
    const { spec } = rs[0];
    const bySeed: Record<string, number> = {};
    for (const r of rs) bySeed[String(r.spec.seed)] = r.accuracy;
    out.push({
      task: spec.task,
      phase: spec.phase as Point["phase"],
      series: spec.series,
      method: spec.method,
      rank: spec.rank,
      total_rank: rs[0].total_rank,
      optimizer_bytes_per_worker: rs[0].optimizer_bytes_per_worker,
      lr: spec.lr * spec.lrFactor,
      mute: spec.mute,
      accuracy: summarize(rs.map((r) => r.accuracy)),
      by_seed: bySeed,
    });
  }
  const order = (p: Point) =>
    [p.task, p.phase, p.series, String(p.rank).padStart(4, "0")].join("|");
  return out.sort((a, b) => order(a) < order(b) ? -1 : order(a) > order(b) ? 1 : 0);
}

function find(ps: readonly Point[], task: StudyTask, series: string, rank: number, phase = "rank") {
  return ps.find((p) =>
    p.task === task && p.series === series && p.rank === rank && p.phase === phase
  );
}

function seedMap(p: Point): Map<number, number> {
  return new Map(Object.entries(p.by_seed).map(([k, v]) => [Number(k), v]));
}

const name = (p: Point) => `${p.series} r=${p.rank}`;

/**
 * The paired differences (same seeds) the study reads: HD-PiSSA against PiSSA at equal rank per
 * worker and at equal total rank, against LoRA at equal total rank; full against LoRA r = 4 (the
 * capacity check, ≥ 0.10 wanted on the capacity task); each control against plain HD-PiSSA.
 */
export function comparisons(s: StudySettings, ps: readonly Point[], seed = 1): Comparison[] {
  const out: Comparison[] = [];
  const add = (task: StudyTask, label: string, a?: Point, b?: Point) => {
    if (!a || !b) return;
    const common = Object.keys(a.by_seed).filter((k) => k in b.by_seed);
    if (common.length === 0) return;
    out.push({
      task,
      label,
      a: name(a),
      b: name(b),
      difference: pairedDifference(seedMap(a), seedMap(b), { seed }),
    });
  };
  const K = s.workers;
  for (const task of s.tasks) {
    for (const p of ps.filter((x) => x.task === task && x.phase === "rank")) {
      if (p.method !== "hd-pissa") continue;
      const r = p.rank;
      add(task, "equal rank per worker", p, find(ps, task, "pissa", r));
      add(task, "equal total rank (2Kr = 2r')", p, find(ps, task, "pissa", K * r));
      add(task, "equal total rank (2Kr = r')", p, find(ps, task, "lora", 2 * K * r));
    }
    add(
      task,
      "capacity check: full − LoRA r=4",
      find(ps, task, "full", 0),
      find(ps, task, "lora", 4),
    );
  }
  const task = controlTask(s);
  const rank = controlRank(s.quick);
  const base = find(ps, task, "hd-pissa", rank);
  for (const p of ps.filter((x) => x.task === task && x.phase === "control")) {
    const ref = p.method === "pissa" ? find(ps, task, "pissa", rank) : base;
    add(task, `control: ${p.series}`, p, ref);
  }
  return out;
}

/** The methods' names in plot order. */
export const CURVE_METHODS: readonly StudyMethod[] = ["lora", "pissa", "hd-pissa"];

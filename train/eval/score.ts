/**
 * Exact-match scoring of generated answers (docs/architecture.md §9): both strings trimmed of whitespace at
 * both ends, then compared for equality; `overall` is the mean over all examples and `tasks`
 * the mean per task label. Also the fixed subset that a default evaluation runs on.
 * @module
 */
import { DomainError } from "../../core/errors.ts";
import { Rng } from "../../core/rng.ts";

/** One generated answer and what it should have been. */
export interface ScoredItem {
  prediction: string;
  reference: string;
  task: string;
}

export interface TaskCount {
  n: number;
  correct: number;
}

/** The `eval.before` / `eval.after` object of report.json. */
export interface EvalScore {
  overall: number;
  /** Accuracy per task label, keys sorted. */
  tasks: Record<string, number>;
  n: number;
  correct: number;
  /** Examples and correct answers per task label, keys sorted. */
  counts: Record<string, TaskCount>;
}

/** Scoring input that cannot give an accuracy. */
export class EvalScoreError extends DomainError {
  static override readonly code: string = "EVAL_SCORE";
}

/** Default cap of examples per task in a default evaluation run. */
export const DEFAULT_EVAL_PER_TASK = 50;

export function exactMatch(prediction: string, reference: string): boolean {
  return prediction.trim() === reference.trim();
}

export function scoreExactMatch(items: readonly ScoredItem[]): EvalScore {
  if (items.length === 0) throw new EvalScoreError("no examples to score");
  const counts = new Map<string, TaskCount>();
  let correct = 0;
  for (const it of items) {
    const hit = exactMatch(it.prediction, it.reference);
    if (hit) correct++;
    const c = counts.get(it.task) ?? { n: 0, correct: 0 };
    c.n++;
    if (hit) c.correct++;
    counts.set(it.task, c);
  }
  const names = [...counts.keys()].sort();
  const tasks: Record<string, number> = {};
  const sortedCounts: Record<string, TaskCount> = {};
  for (const name of names) {
    const c = counts.get(name)!;
    tasks[name] = c.correct / c.n;
    sortedCounts[name] = c;
  }
  return { overall: correct / items.length, tasks, n: items.length, correct, counts: sortedCounts };
}

/**
 * A plain-text table with one row per task and an `overall` row, and one accuracy column per
 * entry of `columns` (e.g. `{ before, after }`).
 */
export function formatScoreTable(columns: Record<string, EvalScore>): string {
  const labels = Object.keys(columns);
  if (labels.length === 0) throw new EvalScoreError("no scores to tabulate");
  const tasks = [...new Set(labels.flatMap((l) => Object.keys(columns[l].tasks)))].sort();
  const first = columns[labels[0]];
  const rows: string[][] = [["task", "n", ...labels]];
  for (const t of tasks) {
    const n = labels.map((l) => columns[l].counts[t]?.n).find((v) => v !== undefined) ?? 0;
    rows.push([t, String(n), ...labels.map((l) => fmtAcc(columns[l].tasks[t]))]);
  }
  rows.push(["overall", String(first.n), ...labels.map((l) => fmtAcc(columns[l].overall))]);
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) =>
    r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join("  ")
  ).join("\n");
}

/**
 * Indices (ascending) of at most `perTask` examples per task label, chosen by a seeded shuffle
 * of each task's examples, so that the default evaluation always runs on the same subset.
 * `perTask = Infinity` keeps everything.
 */
export function evalSubset(
  examples: readonly { task: string }[],
  perTask: number = DEFAULT_EVAL_PER_TASK,
  seed = 0,
): number[] {
  if (!(perTask === Infinity || (Number.isInteger(perTask) && perTask >= 1))) {
    throw new EvalScoreError(
      `examples per task must be an integer >= 1 or Infinity, got ${perTask}`,
    );
  }
  const byTask = new Map<string, number[]>();
  examples.forEach((e, i) => {
    const list = byTask.get(e.task);
    if (list) list.push(i);
    else byTask.set(e.task, [i]);
  });
  const rng = new Rng(seed);
  const picked: number[] = [];
  for (const task of [...byTask.keys()].sort()) {
    const idx = byTask.get(task)!;
    if (idx.length <= perTask) picked.push(...idx);
    else picked.push(...rng.shuffle(idx).slice(0, perTask));
  }
  return picked.sort((a, b) => a - b);
}

function fmtAcc(v: number | undefined): string {
  return v === undefined ? "-" : v.toFixed(3);
}

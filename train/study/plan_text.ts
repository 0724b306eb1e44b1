/**
 * The dry run's text (`deno task study --plan`): the grid by phase and its estimated time, and
 * what a folder already holds; and the short summary printed after a study.
 * @module
 */
import { type BudgetModel, formatDuration, runSeconds, totalSeconds } from "./budget.ts";
import { mainRuns, type Phase, type RunSpec, type StudySettings, tuneRuns } from "./plan.ts";
import type { StudyJson } from "./schema.ts";

/** The plan, one line per phase, then every run with its estimated time. */
export function planLines(
  s: StudySettings,
  budget: BudgetModel,
  finished: ReadonlySet<string> = new Set(),
  listRuns = true,
): string[] {
  const runs: RunSpec[] = [...tuneRuns(s), ...mainRuns(s, new Map())];
  const lines = [
    `study plan: ${runs.length} runs of ${s.steps} steps, K = ${s.workers}, batch ${s.batchSize}, ` +
    `${s.seeds} seed(s), tasks ${s.tasks.join(", ")}`,
  ];
  for (const phase of ["tune", "rank", "control", "mute"] as Phase[]) {
    const rs = runs.filter((r) => r.phase === phase);
    if (rs.length === 0) continue;
    lines.push(
      `  ${phase.padEnd(8)} ${String(rs.length).padStart(4)} runs  ~${
        formatDuration(totalSeconds(rs, s.steps, budget))
      }`,
    );
  }
  const todo = runs.filter((r) => !finished.has(r.id));
  lines.push(
    `  total    ${String(runs.length).padStart(4)} runs  ~${
      formatDuration(totalSeconds(runs, s.steps, budget))
    } (${budget.stepSeconds} s/step at batch ${budget.referenceBatch} + ${budget.overheadSeconds} s/run)`,
    `  left     ${String(todo.length).padStart(4)} runs  ~${
      formatDuration(totalSeconds(todo, s.steps, budget))
    }`,
  );
  if (listRuns) {
    for (const r of runs) {
      lines.push(
        `  ${finished.has(r.id) ? "done" : "    "} ${r.id}  ~${
          Math.round(runSeconds(r, s.steps, budget))
        } s`,
      );
    }
  }
  return lines;
}

/** The figures of a study for the terminal: points and paired differences. */
export function summaryLines(study: StudyJson): string[] {
  const pct = (v: number) => (100 * v).toFixed(1);
  const lines = ["accuracy % (mean ± sd over seeds):"];
  for (const p of study.points) {
    lines.push(
      `  ${p.task.padEnd(6)} ${p.phase.padEnd(8)} ${`${p.series} r=${p.rank}`.padEnd(30)} ` +
        `${pct(p.accuracy.mean)}${p.accuracy.sd === null ? "" : ` ± ${pct(p.accuracy.sd)}`}` +
        (p.mute === "exact" ? "" : `  γ ${p.mute}`),
    );
  }
  if (study.comparisons.length) lines.push("paired differences, points [95% bootstrap interval]:");
  for (const c of study.comparisons) {
    lines.push(
      `  ${c.task.padEnd(6)} ${c.a} − ${c.b} (${c.label}): ${pct(c.difference.mean)} ` +
        `[${pct(c.difference.lo)}, ${pct(c.difference.hi)}], ${c.difference.seeds.length} seed(s)`,
    );
  }
  return lines;
}

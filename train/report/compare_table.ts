/**
 * Side-by-side figures of several runs (one per method): the plain-text table that `--compare`
 * prints and the `compare.json` it writes. Both read the same figures, so they always agree.
 * @module
 */
import { findMethod } from "../methods/registry.ts";
import { type JsonValue, type RunReport, type Timing, writeJsonAtomic } from "./report.ts";

/** Accuracies of one evaluation pass. */
export interface AccuracyFigures {
  overall: number;
  tasks: Record<string, number>;
}

/** The comparable figures of one run; `null` where the report lacks the data. */
export interface MethodFigures {
  method: string;
  steps: number;
  /** Mean finite loss over the last 10% of steps (at least one step). */
  final_loss: number | null;
  accuracy_before: AccuracyFigures | null;
  /** After fine-tuning. */
  accuracy: AccuracyFigures | null;
  /** Matrices with an effective rank. */
  matrices: number;
  "mean_rank_1e-2": number | null;
  mean_energy90: number | null;
  /** First-order bound of docs/architecture.md §2 (HD-PiSSA 2Kr, PiSSA 2r, LoRA r), if known. */
  rank_bound: number | null;
  step_ms_mean: number | null;
  step_ms_median: number | null;
  bytes_sent_per_step: number | null;
  bytes_received_per_step: number | null;
  formula_bytes_sent_per_step: number | null;
  formula_bytes_received_per_step: number | null;
  optimizer_floats_per_worker: number | null;
  optimizer_bytes_per_worker: number | null;
  /** Run totals (docs/architecture.md §9). */
  timing: Timing;
  /** `timing` divided by the number of steps. */
  timing_per_step_ms: { total: number; compute: number; comm: number; update: number } | null;
}

/** The content of `compare.json`. */
export interface CompareJson {
  /** Every task label seen in any run's evaluation, sorted. */
  tasks: string[];
  /** Figures per run, keyed by its label (the method; repeats get " (2)", " (3)"). */
  methods: Record<string, MethodFigures>;
}

/**
 * First-order rank bound of ΔW for a method (docs/architecture.md §2), from `config.workers`/`config.rank`;
 * null for a method that is not registered, or whose bound needs a matrix's shape (full).
 */
export function rankBound(method: string, config: Record<string, JsonValue>): number | null {
  const rank = config.rank;
  const workers = config.workers;
  if (typeof rank !== "number") return null;
  return findMethod(method)?.rankBound({
    rank,
    workers: typeof workers === "number" ? workers : undefined,
  }) ?? null;
}

/** The bound's formula for a method ("2Kr", "2r", "r", ...), or "bound" when unknown. */
export function rankBoundLabel(method: string): string {
  return findMethod(method)?.rankBoundLabel ?? "bound";
}

/** Labels for a list of runs: the method, with " (2)", " (3)" for repeats. */
export function runLabels(reports: readonly RunReport[]): string[] {
  const seen = new Map<string, number>();
  return reports.map((r) => {
    const n = (seen.get(r.method) ?? 0) + 1;
    seen.set(r.method, n);
    return n === 1 ? r.method : `${r.method} (${n})`;
  });
}

/** Every task label of every run's evaluation, sorted. */
export function taskNames(reports: readonly RunReport[]): string[] {
  const names = new Set<string>();
  for (const r of reports) {
    for (const split of [r.eval.before, r.eval.after]) {
      if (split) { for (const t of Object.keys(split.tasks)) names.add(t); }
    }
  }
  return [...names].sort();
}

/** The comparable figures of one run. */
export function methodFigures(report: RunReport): MethodFigures {
  const ranks = Object.values(report.effective_rank);
  const ms = report.steps.map((s) => s.ms).filter(Number.isFinite);
  const sent = report.steps.map((s) => s.bytes_sent).filter(Number.isFinite);
  const received = report.steps.map((s) => s.bytes_received).filter(Number.isFinite);
  const n = report.steps.length;
  const tail = report.steps.slice(n - Math.max(1, Math.ceil(n / 10)))
    .map((s) => s.loss).filter((v): v is number => v !== null && Number.isFinite(v));
  const floats = report.memory?.optimizer_floats_per_worker ?? null;
  const bytes = report.memory?.optimizer_bytes_per_worker ?? (floats === null ? null : 4 * floats);
  const t = report.timing;
  const acc = (s: RunReport["eval"]["after"]) =>
    s ? { overall: s.overall, tasks: { ...s.tasks } } : null;
  return {
    method: report.method,
    steps: n,
    final_loss: mean(tail),
    accuracy_before: acc(report.eval.before),
    accuracy: acc(report.eval.after),
    matrices: ranks.length,
    "mean_rank_1e-2": mean(ranks.map((r) => r["rank_1e-2"])),
    mean_energy90: mean(ranks.map((r) => r.energy90)),
    rank_bound: rankBound(report.method, report.config),
    step_ms_mean: mean(ms),
    step_ms_median: median(ms),
    bytes_sent_per_step: mean(sent),
    bytes_received_per_step: mean(received),
    formula_bytes_sent_per_step: report.bytes_per_step_formula?.sent ?? null,
    formula_bytes_received_per_step: report.bytes_per_step_formula?.received ?? null,
    optimizer_floats_per_worker: floats,
    optimizer_bytes_per_worker: bytes,
    timing: {
      total_ms: t.total_ms,
      compute_ms: t.compute_ms,
      comm_ms: t.comm_ms,
      update_ms: t.update_ms,
    },
    timing_per_step_ms: n === 0 ? null : {
      total: t.total_ms / n,
      compute: t.compute_ms / n,
      comm: t.comm_ms / n,
      update: t.update_ms / n,
    },
  };
}

/** The content of `compare.json` for several runs. */
export function compareJson(reports: readonly RunReport[]): CompareJson {
  const labels = runLabels(reports);
  const methods: Record<string, MethodFigures> = {};
  reports.forEach((r, i) => (methods[labels[i]] = methodFigures(r)));
  return { tasks: taskNames(reports), methods };
}

/** Writes `compare.json` for several runs, atomically. */
export async function writeCompareJson(path: string, reports: readonly RunReport[]): Promise<void> {
  await writeJsonAtomic(path, compareJson(reports));
}

/**
 * A plain-text table for the terminal: one row per run; accuracy after fine-tuning (overall
 * and per task), mean effective rank, mean step time, bytes per step and optimizer memory per
 * worker. Columns are padded to a common width; a legend follows.
 */
export function compareTable(reports: readonly RunReport[]): string {
  if (reports.length === 0) return "(no runs to compare)";
  const labels = runLabels(reports);
  const tasks = taskNames(reports);
  const figs = reports.map(methodFigures);
  const header = [
    "method",
    "acc",
    ...tasks.map((t) => `acc:${printable(t)}`),
    "rank@1e-2",
    "energy90",
    "step ms",
    "sent/step",
    "recv/step",
    "opt mem/worker",
  ];
  const rows = figs.map((f, i) => [
    printable(labels[i]),
    pct(f.accuracy?.overall),
    ...tasks.map((t) => pct(f.accuracy?.tasks[t])),
    fixed(f["mean_rank_1e-2"], 1),
    fixed(f.mean_energy90, 1),
    fixed(f.step_ms_mean, 0),
    formatBytes(f.bytes_sent_per_step),
    formatBytes(f.bytes_received_per_step),
    formatBytes(f.optimizer_bytes_per_worker),
  ]);
  const all = [header, ...rows];
  const widths = header.map((_, c) => Math.max(...all.map((r) => r[c].length)));
  const line = (r: string[]) =>
    r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join("  ");
  const rule = widths.map((w) => "-".repeat(w)).join("  ");
  const matrices = [...new Set(figs.map((f) => f.matrices))].join("/");
  return [
    line(header),
    rule,
    ...rows.map(line),
    "",
    "acc: exact-match accuracy after fine-tuning",
    `rank@1e-2, energy90: effective rank of ΔW, mean over ${matrices} matrices`,
    "step ms: mean wall time per step; sent/recv: payload bytes per step per worker",
    "opt mem: optimizer state per worker",
  ].join("\n");
}

/** 1536 → "1.5 KiB"; null/non-finite → "-". */
export function formatBytes(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let x = v;
  let u = 0;
  while (Math.abs(x) >= 1024 && u < units.length - 1) {
    x /= 1024;
    u++;
  }
  return u === 0 ? `${Math.round(x)} B` : `${x.toFixed(1)} ${units[u]}`;
}

// Names come from user data; control characters would garble (or drive) the terminal.
function printable(s: string): string {
  // deno-lint-ignore no-control-regex
  return s.replace(/[\u0000-\u001f\u007f-\u009f]/g, "?");
}

function pct(v: number | null | undefined): string {
  return v === null || v === undefined || !Number.isFinite(v) ? "-" : `${(100 * v).toFixed(1)}%`;
}

function fixed(v: number | null, digits: number): string {
  return v === null || !Number.isFinite(v) ? "-" : v.toFixed(digits);
}

function mean(xs: readonly number[]): number | null {
  if (xs.length === 0) return null;
  let s = 0;
  for (const x of xs) s += x;
  return s / xs.length;
}

function median(xs: readonly number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

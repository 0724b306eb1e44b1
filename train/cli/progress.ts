/**
 * A progress display for long work (training steps, evaluation): steps done, a bar, loss,
 * tokens per second and the time left.
 *
 * On a terminal it redraws one line in place; into a file or a CI log it prints a plain line
 * now and then (every ~5 s or 10% of the work, and at the end), so logs stay short and
 * readable. The output sink and the clock are injectable, which keeps it testable.
 * @module
 */

import { DomainError } from "../../core/errors.ts";

/** Where progress goes: a function taking text, or anything like `Deno.stderr`. */
export type ProgressWriter = ((text: string) => void) | { writeSync(p: Uint8Array): number };

export interface ProgressOptions {
  /** Units of work in all (steps); a positive integer. */
  total: number;
  /** Shown at the start of the line, e.g. "finetune hd-pissa". */
  label?: string;
  /** Default: standard error. */
  out?: ProgressWriter;
  /** Redraw in place. Default: whether standard error is a terminal (when `out` is default). */
  isTty?: boolean;
  /** Clock in milliseconds. Default: `performance.now`. */
  now?: () => number;
  /** Line width on a terminal; longer lines are cut so that `\r` can redraw them. */
  columns?: number;
  /** Units already done before this display started (a resumed run); the rate counts from it. */
  start?: number;
  /** Plain output: the longest silence between lines, in ms. Default 5000. */
  plainIntervalMs?: number;
  /** Terminal: the shortest time between redraws, in ms. Default 100. */
  redrawIntervalMs?: number;
}

/** Figures shown next to the count; both optional. */
export interface ProgressStats {
  loss?: number;
  tokensPerSec?: number;
}

/** Bad arguments to a progress display. */
export class ProgressError extends DomainError {
  static override readonly code: string = "PROGRESS";
}

const CLEAR_LINE = "\r\x1b[2K";
const BAR_WIDTH = 20;
const PARTIAL = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];

export class Progress {
  readonly total: number;
  readonly label: string;
  readonly isTty: boolean;
  readonly #write: (text: string) => void;
  readonly #now: () => number;
  readonly #columns: number;
  readonly #start: number;
  readonly #t0: number;
  readonly #plainMs: number;
  readonly #redrawMs: number;
  #completed: number;
  #stats: ProgressStats = {};
  #updated = false;
  #finished = false;
  #lastDraw = -Infinity;
  #lastPrinted = -1;
  #drawn = false;
  #dirty = false;

  constructor(opts: ProgressOptions) {
    if (!Number.isInteger(opts.total) || opts.total < 1) {
      throw new ProgressError(`total must be a positive integer, got ${opts.total}`);
    }
    const start = opts.start ?? 0;
    if (!Number.isInteger(start) || start < 0 || start > opts.total) {
      throw new ProgressError(`start must be an integer in [0, ${opts.total}], got ${start}`);
    }
    this.total = opts.total;
    this.label = opts.label ?? "";
    this.#write = toWriteFn(opts.out ?? Deno.stderr);
    this.isTty = opts.isTty ?? (opts.out === undefined && Deno.stderr.isTerminal());
    this.#now = opts.now ?? (() => performance.now());
    this.#columns = opts.columns ?? terminalColumns(opts.out === undefined);
    this.#plainMs = opts.plainIntervalMs ?? 5000;
    this.#redrawMs = opts.redrawIntervalMs ?? 100;
    this.#start = start;
    this.#completed = start;
    this.#t0 = this.#now();
  }

  /** Units done so far. */
  get completed(): number {
    return this.#completed;
  }

  /** Milliseconds since the display started. */
  get elapsedMs(): number {
    return this.#now() - this.#t0;
  }

  /**
   * Estimated milliseconds left, from the mean rate since the display started; null until a
   * unit has completed.
   */
  get etaMs(): number | null {
    const done = this.#completed - this.#start;
    const elapsed = this.elapsedMs;
    if (done <= 0 || !(elapsed > 0)) return this.#completed === this.total ? 0 : null;
    return ((this.total - this.#completed) * elapsed) / done;
  }

  /**
   * Records that `completed` units (0..total) are done, e.g. `update(t + 1, …)` after step t.
   * @throws {ProgressError} for a count outside [0, total] or after `done()`.
   */
  update(completed: number, stats: ProgressStats = {}): void {
    if (this.#finished) throw new ProgressError("update() after done()");
    if (!Number.isInteger(completed) || completed < 0 || completed > this.total) {
      throw new ProgressError(
        `completed must be an integer in [0, ${this.total}], got ${completed}`,
      );
    }
    this.#completed = completed;
    this.#stats = { ...stats };
    const first = !this.#updated;
    this.#updated = true;
    const now = this.#now();
    const last = completed === this.total;
    if (this.isTty) {
      if (first || last || now - this.#lastDraw >= this.#redrawMs) this.#redraw(now);
      else this.#dirty = true;
      return;
    }
    const decile = (n: number) => Math.floor((10 * n) / this.total);
    if (
      completed !== this.#lastPrinted &&
      (first || last || now - this.#lastDraw >= this.#plainMs ||
        decile(completed) > decile(Math.max(0, this.#lastPrinted)))
    ) {
      this.#print(now);
    }
  }

  /** Prints a message on its own line without garbling the progress line. */
  log(text: string): void {
    if (this.isTty && this.#drawn) {
      this.#write(`${CLEAR_LINE}${text}\n`);
      this.#redraw(this.#now());
    } else {
      this.#write(`${text}\n`);
    }
  }

  /** Shows the final state and ends the line; `summary` follows on a line of its own. */
  done(summary?: string): void {
    if (this.#finished) return;
    this.#finished = true;
    const now = this.#now();
    if (this.isTty) {
      if (this.#updated) {
        if (this.#dirty) this.#redraw(now);
        this.#write("\n");
      }
    } else if (this.#updated && this.#lastPrinted !== this.#completed) {
      this.#print(now);
    }
    if (summary !== undefined) this.#write(`${summary}\n`);
  }

  /** The status line as it would be shown now (without control characters). */
  render(): string {
    return this.isTty ? this.#ttyLine() : this.#plainLine();
  }

  #redraw(now: number): void {
    this.#lastDraw = now;
    this.#dirty = false;
    this.#drawn = true;
    this.#write(CLEAR_LINE + this.#ttyLine());
  }

  #print(now: number): void {
    this.#lastDraw = now;
    this.#lastPrinted = this.#completed;
    this.#write(this.#plainLine() + "\n");
  }

  #figures(): string[] {
    const out: string[] = [];
    const { loss, tokensPerSec } = this.#stats;
    if (loss !== undefined) out.push(`loss ${formatLoss(loss)}`);
    if (tokensPerSec !== undefined) out.push(formatRate(tokensPerSec));
    out.push(`elapsed ${formatDuration(this.elapsedMs)}`);
    const eta = this.etaMs;
    out.push(`ETA ${eta === null ? "--:--" : formatDuration(eta)}`);
    return out;
  }

  #ttyLine(): string {
    const n = String(this.total).length;
    const frac = this.#completed / this.total;
    const { loss, tokensPerSec } = this.#stats;
    const eta = this.etaMs;
    const parts: Array<{ text: string; drop: number }> = [
      { text: this.label, drop: 3 },
      { text: bar(frac), drop: 0 },
      { text: `${String(this.#completed).padStart(n)}/${this.total}`, drop: 0 },
      { text: `${Math.floor(100 * frac).toString().padStart(3)}%`, drop: 0 },
      { text: loss === undefined ? "" : `loss ${formatLoss(loss)}`, drop: 0 },
      { text: tokensPerSec === undefined ? "" : formatRate(tokensPerSec), drop: 2 },
      { text: `elapsed ${formatDuration(this.elapsedMs)}`, drop: 1 },
      { text: `ETA ${eta === null ? "--:--" : formatDuration(eta)}`, drop: 0 },
    ];
    const join = () => parts.filter((p) => p.text !== "").map((p) => p.text).join(" ");
    // A line that wraps cannot be redrawn with \r: leave out the least useful parts first.
    let line = join();
    for (let level = 1; level <= 3 && line.length >= this.#columns; level++) {
      for (const p of parts) if (p.drop === level) p.text = "";
      line = join();
    }
    return line.length >= this.#columns ? line.slice(0, Math.max(1, this.#columns - 1)) : line;
  }

  #plainLine(): string {
    const pct = Math.floor((100 * this.#completed) / this.total);
    const head = this.label === "" ? "" : `${this.label}: `;
    return `${head}step ${this.#completed}/${this.total} (${pct}%) ${this.#figures().join(", ")}`;
  }
}

function bar(frac: number): string {
  const cells = Math.max(0, Math.min(1, frac)) * BAR_WIDTH;
  const full = Math.floor(cells);
  const part = Math.floor((cells - full) * 8);
  const body = "█".repeat(full) + (full < BAR_WIDTH ? PARTIAL[part] : "");
  return `│${body}${" ".repeat(BAR_WIDTH - full - (part > 0 && full < BAR_WIDTH ? 1 : 0))}│`;
}

/** 75_500 → "1:15", 3_723_000 → "1:02:03". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return "--:--";
  const s = Math.round(ms / 1000);
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  const two = (v: number) => String(v).padStart(2, "0");
  return hh > 0 ? `${hh}:${two(mm)}:${two(ss)}` : `${mm}:${two(ss)}`;
}

function formatLoss(v: number): string {
  if (Number.isNaN(v)) return "nan";
  if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
  return v.toFixed(4);
}

function formatRate(v: number): string {
  if (!Number.isFinite(v) || v < 0) return "- tok/s";
  if (v < 1000) return `${v.toFixed(0)} tok/s`;
  if (v < 1e6) return `${(v / 1000).toFixed(1)}k tok/s`;
  return `${(v / 1e6).toFixed(2)}M tok/s`;
}

function toWriteFn(out: ProgressWriter): (text: string) => void {
  if (typeof out === "function") return out;
  const enc = new TextEncoder();
  return (text) => {
    const bytes = enc.encode(text);
    let off = 0;
    while (off < bytes.length) off += out.writeSync(bytes.subarray(off));
  };
}

function terminalColumns(useStderr: boolean): number {
  if (useStderr) {
    try {
      // Some pseudo-terminals report 0 columns; a width that small is not a real one.
      const { columns } = Deno.consoleSize();
      if (columns >= 20) return columns;
    } catch {
      // Not a terminal.
    }
  }
  return 120;
}

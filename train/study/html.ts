/**
 * study.html: one self-contained page (no script, no CDN) with, per task, accuracy against the
 * total update rank (one line per method, error bars ± one sd over seeds, full fine-tuning as a
 * dashed level) and against optimizer memory per worker, then the tables of study.json.
 * @module
 */
import { findMethod } from "../methods/registry.ts";
import { escapeHtml } from "../report/html.ts";
import { CURVE_METHODS } from "./analyze.ts";
import { formatDuration } from "./budget.ts";
import type { Point, StudyJson } from "./schema.ts";

const W = 560, H = 320, L = 56, R = 140, T = 20, B = 44;

function colorOf(method: string): string {
  return findMethod(method)?.color ?? "#555";
}

const pct = (v: number) => `${(100 * v).toFixed(1)}`;

/**
 * An SVG plot of accuracy (y, 0…max) against `x` on a log2 axis; one polyline per method of
 * `CURVE_METHODS`, a vertical bar of ± sd at each point, full fine-tuning as a dashed line.
 */
export function accuracyPlot(
  ps: readonly Point[],
  x: (p: Point) => number | null,
  xLabel: string,
  formatX: (v: number) => string,
): string {
  const curves = CURVE_METHODS.map((m) => ({
    method: m,
    pts: ps.filter((p) => p.method === m && x(p) !== null).sort((a, b) => x(a)! - x(b)!),
  })).filter((c) => c.pts.length > 0);
  const full = ps.find((p) => p.method === "full");
  const xs = curves.flatMap((c) => c.pts.map((p) => Math.log2(x(p)!)));
  if (xs.length === 0 && !full) return "<p>(no finished runs to plot yet)</p>";
  const x0 = xs.length ? Math.min(...xs) - 0.3 : 0, x1 = xs.length ? Math.max(...xs) + 0.3 : 1;
  const hi = (p: Point) => p.accuracy.mean + (p.accuracy.sd ?? 0);
  const yMax = Math.min(1, Math.max(0.05, ...ps.map(hi)) * 1.1);
  const px = (v: number) => L + ((Math.log2(v) - x0) / (x1 - x0 || 1)) * (W - L - R);
  const py = (a: number) => T + (1 - a / yMax) * (H - T - B);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
    `role="img" aria-label="accuracy against ${escapeHtml(xLabel)}">`,
    `<rect x="${L}" y="${T}" width="${W - L - R}" height="${
      H - T - B
    }" fill="none" stroke="#ccc"/>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const a = (yMax * i) / 4;
    parts.push(
      `<line x1="${L}" x2="${W - R}" y1="${py(a)}" y2="${py(a)}" stroke="#eee"/>`,
      `<text x="${L - 6}" y="${py(a) + 4}" text-anchor="end" font-size="11">${pct(a)}</text>`,
    );
  }
  const ticks = [...new Set(curves.flatMap((c) => c.pts.map((p) => x(p)!)))].sort((a, b) => a - b);
  for (const t of ticks) {
    parts.push(
      `<text x="${px(t)}" y="${H - B + 16}" text-anchor="middle" font-size="11">${
        escapeHtml(formatX(t))
      }</text>`,
    );
  }
  parts.push(
    `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle" font-size="12">${
      escapeHtml(xLabel)
    } (log scale)</text>`,
    `<text x="14" y="${(T + H - B) / 2}" font-size="12" transform="rotate(-90 14 ${
      (T + H - B) / 2
    })" text-anchor="middle">accuracy %</text>`,
  );
  if (full) {
    const y = py(full.accuracy.mean);
    parts.push(
      `<line class="full" x1="${L}" x2="${W - R}" y1="${y}" y2="${y}" stroke="${
        colorOf("full")
      }" stroke-dasharray="6 4"/>`,
      // In the legend, below the curves' names: beside the line it would sit on a name when
      // full fine-tuning is near the top, as it is on the capacity task.
      `<text x="${W - R + 6}" y="${T + 14 + 16 * curves.length}" font-size="11" fill="${
        colorOf("full")
      }">full (dashed) ${pct(full.accuracy.mean)}${
        full.accuracy.sd === null ? "" : ` ± ${pct(full.accuracy.sd)}`
      }</text>`,
    );
  }
  curves.forEach((c, i) => {
    const color = colorOf(c.method);
    const line = c.pts.map((p) => `${px(x(p)!)},${py(p.accuracy.mean)}`).join(" ");
    parts.push(
      `<polyline class="curve" data-method="${c.method}" points="${line}" fill="none" ` +
        `stroke="${color}" stroke-width="2"/>`,
    );
    for (const p of c.pts) {
      const cx = px(x(p)!), sd = p.accuracy.sd ?? 0;
      parts.push(
        `<line class="errorbar" x1="${cx}" x2="${cx}" y1="${
          py(Math.min(yMax, p.accuracy.mean + sd))
        }" ` +
          `y2="${py(Math.max(0, p.accuracy.mean - sd))}" stroke="${color}"/>`,
        `<circle cx="${cx}" cy="${py(p.accuracy.mean)}" r="3" fill="${color}"><title>${
          escapeHtml(
            `${p.series} r=${p.rank}: ${pct(p.accuracy.mean)} ± ${
              p.accuracy.sd === null ? "-" : pct(p.accuracy.sd)
            } (n=${p.accuracy.n})`,
          )
        }</title></circle>`,
      );
    }
    parts.push(
      `<text x="${W - R + 6}" y="${
        T + 14 + 16 * i
      }" font-size="12" fill="${color}">${c.method}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n");
}

function table(head: string[], rows: string[][]): string {
  const th = head.map((h) => `<th>${escapeHtml(h)}</th>`).join("");
  const trs = rows.map((r) => `<tr>${r.map((c) => `<td>${escapeHtml(c)}</td>`).join("")}</tr>`);
  return `<table><thead><tr>${th}</tr></thead><tbody>${trs.join("")}</tbody></table>`;
}

const acc = (p: Point) =>
  `${pct(p.accuracy.mean)}${p.accuracy.sd === null ? "" : ` ± ${pct(p.accuracy.sd)}`}`;

const kib = (b: number | null) => b === null ? "-" : `${(b / 1024).toFixed(0)} KiB`;

/** The whole page. */
export function renderStudyHtml(study: StudyJson): string {
  const s = study.settings;
  const sections: string[] = [];
  for (const task of s.tasks) {
    const ps = study.points.filter((p) => p.task === task && p.phase === "rank");
    sections.push(
      `<h2>${escapeHtml(task)}</h2>`,
      `<div class="plots">`,
      accuracyPlot(ps, (p) => p.total_rank, "total update rank", String),
      accuracyPlot(
        ps,
        (p) => p.optimizer_bytes_per_worker,
        "optimizer memory per worker",
        (v) => `${(v / 1024).toFixed(0)}K`,
      ),
      `</div>`,
      table(
        ["method", "r", "total rank", "opt. memory/worker", "lr", "accuracy % (mean ± sd)", "n"],
        ps.map((p) => [
          p.series,
          String(p.rank),
          p.total_rank === null ? "-" : String(p.total_rank),
          kib(p.optimizer_bytes_per_worker),
          String(p.lr),
          acc(p),
          String(p.accuracy.n),
        ]),
      ),
    );
  }
  const others = study.points.filter((p) => p.phase !== "rank");
  const cmp = study.comparisons.map((c) => [
    c.task,
    c.label,
    `${c.a} − ${c.b}`,
    `${pct(c.difference.mean)} [${pct(c.difference.lo)}, ${pct(c.difference.hi)}]`,
    String(c.difference.seeds.length),
  ]);
  const tune = study.tuning.map((t) => [
    t.task,
    t.method,
    t.grid.map((g) => `${g.lr}: ${g.valid_accuracy === null ? "…" : pct(g.valid_accuracy)}`)
      .join(", "),
    t.best === null ? "…" : String(t.best),
  ]);
  const b = study.budget;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>When does HD-PiSSA's extra rank pay?</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.plots{display:flex;flex-wrap:wrap;gap:1em}
</style></head><body>
<h1>When does HD-PiSSA's extra rank pay?</h1>
<p>${study.runs.finished} of ${study.runs.planned} planned runs finished. ${s.steps} steps per run,
K = ${s.workers}, batch ${s.batchSize}, ${s.seeds} seed(s)${s.quick ? ", quick mode" : ""}.
Estimated time of the whole grid: ${formatDuration(b.estimated_s)} (${b.step_s} s/step +
${b.overhead_s} s/run)${
    b.measured_mean_run_s === null
      ? ""
      : `; measured so far: ${b.measured_mean_run_s.toFixed(1)} s per run on average`
  }. Error bars: ± one standard deviation over seeds.</p>
${sections.join("\n")}
<h2>Paired differences (same seeds), 95% bootstrap intervals</h2>
${table(["task", "comparison", "a − b", "difference, points [interval]", "seeds"], cmp)}
<h2>Controls and mute ablation</h2>
${
    table(
      ["task", "series", "r", "γ", "lr", "accuracy % (mean ± sd)", "n"],
      others.map((p) => [
        p.task,
        p.series,
        String(p.rank),
        String(p.mute),
        String(p.lr),
        acc(p),
        String(p.accuracy.n),
      ]),
    )
  }
<h2>Learning-rate tuning (validation split of the training file)</h2>
${table(["task", "method", "rate: validation accuracy %", "chosen"], tune)}
</body></html>
`;
}

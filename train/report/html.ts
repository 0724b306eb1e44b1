/**
 * `report.html`: one self-contained page per run, and one comparing several runs. Charts are
 * inline SVG drawn here, styles are inline CSS; the page loads nothing from anywhere, so it can
 * be mailed, archived or opened offline. Every string taken from a report is HTML-escaped.
 * @module
 */
import type { JsonValue, RunReport, StepRecord } from "./report.ts";
import { SUMMARY_KEYS } from "../cli/finetune_flags.ts";
import {
  formatBytes,
  type MethodFigures,
  methodFigures,
  rankBound,
  rankBoundLabel,
  runLabels,
  taskNames,
} from "./compare_table.ts";
import { TRAINING_METHODS } from "../methods/registry.ts";

// ---------------------------------------------------------------------------------------------
// Escaping and number formatting

/** Escapes text for HTML element content and quoted attribute values. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}
const ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
};
const h = escapeHtml;

function isNum(v: unknown): v is number {
  return typeof v === "number" && Number.isFinite(v);
}

function fmtPct(v: number | null | undefined): string {
  return isNum(v) ? `${(100 * v).toFixed(1)}%` : "–";
}

function fmtNum(v: number | null | undefined, digits = 1): string {
  return isNum(v) ? v.toFixed(digits) : "–";
}

/** Loss-like values: 4 significant digits. */
function fmtSig(v: number | null | undefined): string {
  if (v === null || v === undefined) return "–";
  if (Number.isNaN(v)) return "NaN";
  if (!Number.isFinite(v)) return v > 0 ? "∞" : "−∞";
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 1e5 || a < 1e-3 ? v.toExponential(2) : String(Number(v.toPrecision(4)));
}

function fmtMs(v: number | null | undefined): string {
  if (!isNum(v)) return "–";
  if (v < 10) return `${v.toFixed(2)} ms`;
  if (v < 1000) return `${v.toFixed(0)} ms`;
  if (v < 60_000) return `${(v / 1000).toFixed(1)} s`;
  const m = Math.floor(v / 60_000);
  if (m < 60) return `${m} min ${Math.round((v % 60_000) / 1000)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function fmtBytes(v: number | null | undefined): string {
  return isNum(v) ? formatBytes(v) : "–";
}

function fmtInt(v: number | null | undefined): string {
  return isNum(v) ? Math.round(v).toLocaleString("en-US") : "–";
}

function fmtJson(v: JsonValue | undefined): string {
  if (v === undefined) return "–";
  if (Array.isArray(v)) return v.map((x) => fmtJson(x)).join(", ");
  if (v !== null && typeof v === "object") return JSON.stringify(v);
  return String(v);
}

const SUPERSCRIPT: Record<string, string> = {
  "-": "⁻",
  "0": "⁰",
  "1": "¹",
  "2": "²",
  "3": "³",
  "4": "⁴",
  "5": "⁵",
  "6": "⁶",
  "7": "⁷",
  "8": "⁸",
  "9": "⁹",
};

function fmtDecade(e: number): string {
  if (e === 0) return "1";
  if (e === 1) return "10";
  return "10" + String(e).split("").map((c) => SUPERSCRIPT[c] ?? c).join("");
}

/** Labels for the ticks of one axis, in one consistent notation. */
function tickLabels(ticks: readonly number[], step: number): string[] {
  const big = Math.max(0, ...ticks.map(Math.abs));
  if (big >= 1e5 || (big > 0 && big < 1e-3)) {
    // The fewest mantissa digits that keep the labels apart.
    for (let d = 0; d <= 4; d++) {
      const out = ticks.map((t) => (t === 0 ? "0" : t.toExponential(d).replace("e+", "e")));
      if (new Set(out).size === out.length || d === 4) return out;
    }
  }
  const digits = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
  return ticks.map((t) => t.toFixed(digits));
}

// ---------------------------------------------------------------------------------------------
// Colours

/** Each registered method's own colour. */
const METHOD_COLORS: Record<string, string> = Object.fromEntries(
  TRAINING_METHODS.flatMap((m) => m.color ? [[m.name, m.color]] : []),
);
const EXTRA_COLORS = ["#6a4c93", "#5c946e", "#8d6a9f", "#3d5a80", "#b56576", "#7f7f7f"];

function methodColors(methods: readonly string[]): string[] {
  let extra = 0;
  const used = new Set<string>();
  return methods.map((m) => {
    const c = METHOD_COLORS[m];
    if (c && !used.has(c)) {
      used.add(c);
      return c;
    }
    return EXTRA_COLORS[extra++ % EXTRA_COLORS.length];
  });
}

// Viridis stops; the light yellow end is cut off because it vanishes on white.
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [170, 220, 50]];

function rampColor(t: number): string {
  const x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  const f = x - i;
  const c = RAMP[i].map((v, k) => Math.round(v + f * (RAMP[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

// ---------------------------------------------------------------------------------------------
// SVG line charts

interface Line {
  /** Value of the `data-series` attribute, for tools and tests. */
  series: string;
  /** Colours come from the palettes above only, never from a report. */
  color: string;
  points: ReadonlyArray<readonly [number, number]>;
  width?: number;
  opacity?: number;
  dash?: string;
  /** Draw a dot at every point (for very short series). */
  dots?: boolean;
  /** Mark points whose y is not finite with a cross at the top edge. */
  markNonFinite?: boolean;
}

interface Rule {
  at: number;
  label: string;
  color?: string;
}

interface ChartOptions {
  width: number;
  height: number;
  xLabel: string;
  yLabel: string;
  lines: Line[];
  yLog?: boolean;
  /** Log scale: values below this are drawn at it. */
  yFloor?: number;
  /** Vertical reference lines. */
  xRules?: Rule[];
  /** Horizontal reference lines. */
  yRules?: Rule[];
  /** Linear scale: start the y axis at 0 (for durations, rates). */
  yZero?: boolean;
  /** Text shown instead of a chart when there is nothing to draw. */
  empty: string;
  /** Accessible description. */
  title: string;
}

// Ids of clip paths, unique within a page; reset per page so that output is reproducible.
let clipSeq = 0;

/** Points drawn per series at most; longer series are thinned evenly. */
const MAX_POINTS = 2000;

const PAD = { left: 64, right: 14, top: 12, bottom: 42 };

function niceStep(span: number, target: number): number {
  const raw = span / Math.max(1, target);
  const p = 10 ** Math.floor(Math.log10(raw));
  const m = raw / p;
  return (m < 1.5 ? 1 : m < 3 ? 2 : m < 7 ? 5 : 10) * p;
}

function linearTicks(
  lo: number,
  hi: number,
  target: number,
  minStep = 0,
): { ticks: number[]; step: number } {
  const step = Math.max(minStep, niceStep(hi - lo, target));
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
    ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return { ticks, step };
}

function lineChart(o: ChartOptions): string {
  const transform = (y: number) => (o.yLog ? Math.log10(Math.max(y, o.yFloor ?? 0)) : y);
  const usable = (y: number) => Number.isFinite(y) && (!o.yLog || y > 0 || (o.yFloor ?? 0) > 0);
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const l of o.lines) {
    for (const [x, y] of l.points) {
      if (!Number.isFinite(x)) continue;
      x0 = Math.min(x0, x);
      x1 = Math.max(x1, x);
      if (usable(y)) {
        const ty = transform(y);
        y0 = Math.min(y0, ty);
        y1 = Math.max(y1, ty);
      }
    }
  }
  if (!(x0 <= x1) || !(y0 <= y1)) {
    return `<div class="empty" role="img" aria-label="${h(o.title)}">${h(o.empty)}</div>`;
  }
  if (x0 === x1) {
    x0 -= 0.5;
    x1 += 0.5;
  }
  if (o.yLog) {
    y0 = Math.floor(y0 + 1e-9);
    y1 = Math.ceil(y1 - 1e-9);
    if (y0 === y1) y0 -= 1;
  } else if (y0 === y1 && o.yZero && y0 >= 0) {
    y1 = y0 > 0 ? y0 * 1.1 : 1;
    y0 = 0;
  } else if (y0 === y1) {
    const d = Math.abs(y0) * 0.1 || 1;
    y0 -= d;
    y1 += d;
  } else {
    const d = (y1 - y0) * 0.05;
    y0 = o.yZero && y0 >= 0 ? 0 : y0 >= 0 && y0 - d < 0 ? 0 : y0 - d;
    y1 += d;
  }
  const W = o.width, H = o.height;
  const pw = W - PAD.left - PAD.right, ph = H - PAD.top - PAD.bottom;
  const sx = (x: number) => PAD.left + ((x - x0) / (x1 - x0)) * pw;
  const sy = (ty: number) => PAD.top + (1 - (ty - y0) / (y1 - y0)) * ph;
  const r1 = (v: number) => Math.round(v * 10) / 10;
  const parts: string[] = [];
  parts.push(
    `<svg class="chart" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" ` +
      `><title>${h(o.title)}</title>`,
  );
  // Grid and y ticks.
  const yTicks: Array<[number, string]> = [];
  if (o.yLog) {
    const every = Math.max(1, Math.ceil((y1 - y0) / 8));
    for (let e = y0; e <= y1; e += every) yTicks.push([e, fmtDecade(e)]);
  } else {
    const { ticks, step } = linearTicks(y0, y1, 5);
    const labels = tickLabels(ticks, step);
    ticks.forEach((t, i) => yTicks.push([t, labels[i]]));
  }
  for (const [t, label] of yTicks) {
    const y = r1(sy(t));
    parts.push(
      `<line class="grid" x1="${PAD.left}" x2="${W - PAD.right}" y1="${y}" y2="${y}"/>` +
        `<text class="tick" x="${PAD.left - 6}" y="${y + 3.5}" text-anchor="end">${
          h(label)
        }</text>`,
    );
  }
  // Steps and indices are whole numbers: no ticks between them.
  const { ticks: xTicks, step: xStep } = linearTicks(x0, x1, Math.max(2, Math.floor(pw / 90)), 1);
  const xLabels = tickLabels(xTicks, xStep);
  for (const [i, t] of xTicks.entries()) {
    const x = r1(sx(t));
    parts.push(
      `<line class="grid" x1="${x}" x2="${x}" y1="${PAD.top}" y2="${PAD.top + ph}"/>` +
        `<text class="tick" x="${x}" y="${PAD.top + ph + 15}" text-anchor="middle">${
          h(xLabels[i])
        }</text>`,
    );
  }
  parts.push(
    `<rect class="frame" x="${PAD.left}" y="${PAD.top}" width="${pw}" height="${ph}"/>`,
    `<text class="axis" x="${PAD.left + pw / 2}" y="${H - 6}" text-anchor="middle">${
      h(o.xLabel)
    }</text>`,
    `<text class="axis" transform="translate(12 ${PAD.top + ph / 2}) rotate(-90)" ` +
      `text-anchor="middle">${h(o.yLabel)}</text>`,
  );
  for (const r of o.yRules ?? []) {
    if (!usable(r.at)) continue;
    const ty = transform(r.at);
    if (ty < y0 || ty > y1) continue;
    const y = r1(sy(ty));
    parts.push(
      `<line class="rule" x1="${PAD.left}" x2="${W - PAD.right}" y1="${y}" y2="${y}"/>` +
        `<text class="rule-label" x="${W - PAD.right - 4}" y="${y - 4}" text-anchor="end">${
          h(r.label)
        }</text>`,
    );
  }
  (o.xRules ?? []).forEach((r, i) => {
    if (!(r.at >= x0 && r.at <= x1)) return;
    const x = r1(sx(r.at));
    const stroke = r.color ? ` style="stroke:${r.color}"` : "";
    const fill = r.color ? ` style="fill:${r.color}"` : "";
    parts.push(
      `<line class="rule" x1="${x}" x2="${x}" y1="${PAD.top}" y2="${PAD.top + ph}"${stroke}/>` +
        `<text class="rule-label" x="${x + 4}" y="${PAD.top + 12 + 13 * i}"${fill}>${
          h(r.label)
        }</text>`,
    );
  });
  // Series, clipped to the plot area; a non-finite y breaks the line.
  const clip = `clip${++clipSeq}`;
  parts.push(
    `<clipPath id="${clip}"><rect x="${PAD.left}" y="${PAD.top}" width="${pw}" height="${ph}"/>` +
      `</clipPath><g clip-path="url(#${clip})">`,
  );
  for (const l of o.lines) {
    const style = `stroke:${l.color};stroke-width:${l.width ?? 1.6};` +
      (l.opacity !== undefined ? `stroke-opacity:${l.opacity};` : "") +
      (l.dash ? `stroke-dasharray:${l.dash};` : "");
    let seg: string[] = [];
    const flush = () => {
      if (seg.length > 0) {
        parts.push(
          `<polyline class="series" data-series="${h(l.series)}" style="${style}" ` +
            `points="${seg.join(" ")}"/>`,
        );
      }
      seg = [];
    };
    const dots: string[] = [];
    const crosses: number[] = [];
    // A chart is ~1000 px wide: beyond MAX_POINTS, every point would only grow the file.
    const stride = Math.ceil(l.points.length / MAX_POINTS);
    const last = l.points.length - 1;
    for (const [i, [x, y]] of l.points.entries()) {
      if (!Number.isFinite(x) || !usable(y)) {
        if (l.markNonFinite && Number.isFinite(x) && !Number.isFinite(y)) crosses.push(sx(x));
        flush();
        continue;
      }
      if (i % stride !== 0 && i !== last) continue;
      const px = r1(sx(x)), py = r1(sy(transform(y)));
      seg.push(`${px},${py}`);
      if (l.dots || l.points.length === 1) dots.push(`${px},${py}`);
    }
    flush();
    for (const d of dots) {
      const [cx, cy] = d.split(",");
      parts.push(`<circle cx="${cx}" cy="${cy}" r="2.6" style="fill:${l.color}"/>`);
    }
    for (const cx of crosses) {
      const x = r1(cx), y = PAD.top + 6;
      parts.push(
        `<path class="nonfinite" d="M${x - 4},${y - 4}L${x + 4},${y + 4}M${x - 4},${y + 4}` +
          `L${x + 4},${y - 4}"/>`,
      );
    }
  }
  parts.push(`</g></svg>`);
  return parts.join("");
}

function legend(
  items: Array<{ label: string; color: string; dash?: boolean }>,
  underChart = true,
): string {
  if (items.length === 0) return "";
  return `<div class="${underChart ? "legend" : "legend flush"}">${
    items.map((i) =>
      `<span><i class="${i.dash ? "swatch dash" : "swatch"}" style="--c:${i.color}"></i>${
        h(i.label)
      }</span>`
    ).join("")
  }</div>`;
}

// ---------------------------------------------------------------------------------------------
// Data shaping

/** Debiased exponential moving average; non-finite values are skipped, not propagated. */
export function smoothLoss(values: ReadonlyArray<number | null>): number[] {
  const n = values.length;
  const w = Math.min(0.97, Math.max(0, 1 - 10 / Math.max(1, n)));
  const out: number[] = [];
  let acc = 0, norm = 0;
  for (const v of values) {
    if (v !== null && Number.isFinite(v)) {
      acc = w * acc + (1 - w) * v;
      norm = w * norm + (1 - w);
    }
    out.push(norm > 0 ? acc / norm : NaN);
  }
  return out;
}

function lossOf(s: StepRecord): number {
  return s.loss === null ? NaN : s.loss;
}

interface MatrixName {
  layer: number | null;
  kind: string;
}

/** `model.layers.3.self_attn.q_proj.weight` → layer 3, kind `self_attn.q_proj`. */
function parseMatrixName(name: string): MatrixName {
  const m = /(?:^|\.)layers\.(\d+)\.(.+?)(?:\.weight)?$/.exec(name);
  return m ? { layer: Number(m[1]), kind: m[2] } : { layer: null, kind: name };
}

/** At most `k` items spread evenly, first and last included. */
function spread<T>(xs: readonly T[], k: number): T[] {
  if (xs.length <= k) return [...xs];
  const out: T[] = [];
  for (let i = 0; i < k; i++) out.push(xs[Math.round((i * (xs.length - 1)) / (k - 1))]);
  return [...new Set(out)];
}

const SPECTRUM_FLOOR = 1e-8;

/** σ_i/σ_1 against i (1-based); empty when σ_1 is not positive. */
function normalisedSpectrum(s: readonly number[]): Array<[number, number]> {
  if (s.length === 0 || !(s[0] > 0)) return [];
  return s.map((v, i) => [i + 1, v / s[0]]);
}

function describe(d: RunReport["model"]): string | null {
  if (d === undefined) return null;
  if (typeof d === "string") return d;
  if (d.name || d.path) return [d.name, d.path].filter(Boolean).join(" · ");
  return Object.entries(d).map(([k, v]) => `${k}: ${fmtJson(v)}`).join(", ");
}

function duration(r: RunReport): string | null {
  if (!r.started_at) return null;
  const a = Date.parse(r.started_at);
  const b = r.finished_at ? Date.parse(r.finished_at) : NaN;
  const start = r.started_at.replace("T", " ").replace(/\.\d+/, "");
  return Number.isFinite(b) ? `${start} · ${fmtMs(b - a)}` : start;
}

// ---------------------------------------------------------------------------------------------
// Page frame

const CSS = `
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f6f7f9;--card:#fff;--accent:#d1495b;
--grid:#eceef2;--good:#1a7f4b;--bad:#b42318;color-scheme:light}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:28px 24px 48px}
header h1{font-size:26px;margin:0 0 4px;letter-spacing:-.01em}
header .sub{color:var(--muted);margin:0 0 16px}
h2{font-size:17px;margin:0 0 12px}
h3{font-size:14px;margin:14px 0 6px;color:var(--muted);font-weight:600}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:18px 20px;margin:16px 0}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px;margin:14px 0}
.tile{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px 14px}
.tile b{display:block;font-size:20px;font-variant-numeric:tabular-nums}
.tile span{color:var(--muted);font-size:12px}
.chips{display:flex;flex-wrap:wrap;gap:6px}
.chip{background:var(--card);border:1px solid var(--line);border-radius:999px;padding:2px 10px;
font-size:12.5px}
.chip span{color:var(--muted)}
.method{display:inline-block;border-radius:6px;padding:1px 8px;color:#fff;font-weight:600}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{font-weight:600;color:var(--muted);font-size:12.5px;background:var(--card);position:sticky;top:0;
white-space:normal;vertical-align:bottom}
th:first-child,td:first-child{text-align:left}
td.name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;
white-space:normal;word-break:break-all}
tr.total td{font-weight:700;border-top:2px solid var(--line)}
td.best{font-weight:700;color:var(--good)}
.up{color:var(--good)}.down{color:var(--bad)}
.bar{display:inline-block;vertical-align:middle;width:70px;height:7px;background:var(--grid);
border-radius:4px;margin-left:8px;overflow:hidden}
.bar i{display:block;height:100%;background:var(--c,var(--accent))}
.scroll{max-height:420px;overflow:auto;border:1px solid var(--line);border-radius:8px}
.grid2{display:grid;grid-template-columns:repeat(auto-fill,minmax(500px,1fr));gap:14px}
.chart{display:block;max-width:100%;height:auto}
.chart .grid{stroke:var(--grid);stroke-width:1}
.chart .frame{fill:none;stroke:#c9ced6;stroke-width:1}
.chart .tick{fill:var(--muted);font-size:11px}
.chart .axis{fill:var(--fg);font-size:12px}
.chart .series{fill:none;stroke-linejoin:round;stroke-linecap:round}
.chart .rule{stroke:#98a2b3;stroke-width:1;stroke-dasharray:4 3}
.chart .rule-label{fill:var(--muted);font-size:11px;paint-order:stroke;stroke:#fff;stroke-width:3px;
stroke-linejoin:round}
.chart .nonfinite{stroke:var(--bad);stroke-width:2}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12.5px;margin:4px 0 2px 64px}
.legend.flush{margin:6px 0}
.wide{overflow-x:auto}
.swatch{display:inline-block;width:18px;height:0;border-top:3px solid var(--c);
vertical-align:middle;margin-right:6px}
.swatch.dash{border-top-style:dashed}
.empty{padding:28px;text-align:center;color:var(--muted);border:1px dashed var(--line);
border-radius:8px}
.note{color:var(--muted);font-size:12.5px;margin:6px 0 0}
.stack{display:flex;height:22px;border-radius:6px;overflow:hidden;background:var(--grid);
margin:4px 0}
.stack i{display:block;height:100%}
.split{display:grid;grid-template-columns:120px 1fr 110px;gap:10px;align-items:center;margin:6px 0}
details summary{cursor:pointer;color:var(--muted)}
`;

function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>${h(title)}</title><style>${CSS}</style></head>
<body><main>
${body}
</main></body></html>
`;
}

function tile(value: string, label: string): string {
  return `<div class="tile"><b>${h(value)}</b><span>${h(label)}</span></div>`;
}

function chips(entries: Array<[string, string]>): string {
  return `<div class="chips">${
    entries.map(([k, v]) => `<span class="chip"><span>${h(k)}</span> ${h(v)}</span>`).join("")
  }</div>`;
}

function methodBadge(method: string, color: string): string {
  return `<span class="method" style="background:${color}">${h(method)}</span>`;
}

function accCell(v: number | undefined, color = "var(--accent)", best = false): string {
  if (!isNum(v)) return `<td>–</td>`;
  const w = Math.max(0, Math.min(100, 100 * v)).toFixed(1);
  return `<td${best ? ` class="best"` : ""}>${fmtPct(v)}<span class="bar" style="--c:${color}">` +
    `<i style="width:${w}%"></i></span></td>`;
}

function deltaCell(before: number | undefined, after: number | undefined): string {
  if (!isNum(before) || !isNum(after)) return `<td>–</td>`;
  const d = 100 * (after - before);
  const cls = d > 0 ? "up" : d < 0 ? "down" : "";
  return `<td class="${cls}">${d > 0 ? "+" : d < 0 ? "−" : "±"}${Math.abs(d).toFixed(1)} pt</td>`;
}

function configTable(config: Record<string, JsonValue>): string {
  const rows = Object.keys(config).sort().map((k) =>
    `<tr><td class="name">${h(k)}</td><td style="text-align:left">${
      h(fmtJson(config[k]))
    }</td></tr>`
  ).join("");
  return `<details><summary>All ${Object.keys(config).length} resolved flags</summary>` +
    `<div class="scroll" style="margin-top:8px"><table><tr><th>flag</th>` +
    `<th style="text-align:left">value</th></tr>${rows}</table></div></details>`;
}

// ---------------------------------------------------------------------------------------------
// One run

/** The `report.html` of one run. */
export function renderReportHtml(report: RunReport): string {
  clipSeq = 0;
  const color = methodColors([report.method])[0];
  const f = methodFigures(report);
  const sub = [describe(report.model), describe(report.data), duration(report)]
    .filter((x): x is string => x !== null);
  const key = SUMMARY_KEYS.filter((k) => k in report.config)
    .map((k): [string, string] => [k, fmtJson(report.config[k])]);
  const before = report.eval.before?.overall;
  const after = report.eval.after?.overall;
  const header = `<header><h1>${methodBadge(report.method, color)} fine-tuning report</h1>` +
    `<p class="sub">${sub.map(h).join(" · ") || "&nbsp;"}</p>${chips(key)}` +
    `<div class="tiles">${
      [
        tile(String(report.steps.length), "steps"),
        tile(fmtSig(f.final_loss), "final loss (last 10%)"),
        tile(
          fmtPct(after),
          isNum(before) ? `accuracy after (before ${fmtPct(before)})` : "accuracy after",
        ),
        tile(fmtNum(f["mean_rank_1e-2"]), "mean rank@1e-2 of ΔW"),
        tile(fmtMs(f.step_ms_mean), "mean step time"),
        tile(fmtBytes(f.bytes_sent_per_step), "sent per step per worker"),
      ].join("")
    }</div></header>`;
  return page(
    `${report.method} fine-tuning report`,
    [
      header,
      trainingSection(report, color),
      evalSection(report, color),
      rankSection(report),
      spectraSection(report),
      adapterSection(report),
      performanceSection(report, f, color),
      `<section id="configuration"><h2>Configuration</h2>${configTable(report.config)}</section>`,
    ].join("\n"),
  );
}

function trainingSection(r: RunReport, color: string): string {
  const pts = r.steps.map((s): [number, number] => [s.step, lossOf(s)]);
  const smooth = smoothLoss(r.steps.map((s) => s.loss));
  const bad = r.steps.filter((s) => !Number.isFinite(lossOf(s))).length;
  const loss = lineChart({
    width: 1060,
    height: 320,
    xLabel: "step",
    yLabel: "training loss",
    title: "training loss per step",
    empty: "No steps recorded.",
    lines: [
      { series: "loss", color, points: pts, width: 1, opacity: 0.35, markNonFinite: true },
      {
        series: "loss-smoothed",
        color,
        points: r.steps.map((s, i): [number, number] => [s.step, smooth[i]]),
        width: 2.4,
      },
    ],
  });
  const lr = lineChart({
    width: 1060,
    height: 170,
    xLabel: "step",
    yLabel: "learning rate",
    title: "learning rate per step",
    empty: "No steps recorded.",
    yZero: true,
    lines: [{
      series: "lr",
      color: "#30638e",
      points: r.steps.map((s): [number, number] => [s.step, s.lr]),
      width: 1.8,
    }],
  });
  const note = bad > 0
    ? `<p class="note down">${bad} step(s) had a non-finite loss (× at the top).</p>`
    : "";
  return `<section id="training"><h2>Training</h2>${loss}${
    legend([{ label: "loss per step", color: `${color}66` }, {
      label: "smoothed (EMA)",
      color,
    }])
  }${note}<h3>Learning-rate schedule</h3>${lr}</section>`;
}

function evalSection(r: RunReport, color: string): string {
  const b = r.eval.before, a = r.eval.after;
  if (!b && !a) {
    return `<section id="evaluation"><h2>Evaluation</h2><div class="empty">Not evaluated.</div></section>`;
  }
  const tasks = taskNames([r]);
  const counts = a?.counts ?? b?.counts;
  const row = (name: string, vb: number | undefined, va: number | undefined, n?: number) =>
    `<td class="name">${h(name)}</td><td>${fmtInt(n)}</td>${accCell(vb, "#98a2b3")}${
      accCell(va, color)
    }${deltaCell(vb, va)}`;
  const rows = tasks.map((t) => `<tr>${row(t, b?.tasks[t], a?.tasks[t], counts?.[t]?.n)}</tr>`);
  rows.push(`<tr class="total">${row("overall", b?.overall, a?.overall, a?.n ?? b?.n)}</tr>`);
  return `<section id="evaluation"><h2>Evaluation <span class="note">exact match, greedy decoding</span></h2>` +
    `<table><tr><th>task</th><th>n</th><th>before</th><th>after</th><th>change</th></tr>${
      rows.join("")
    }</table></section>`;
}

function rankSection(r: RunReport): string {
  const names = Object.keys(r.effective_rank);
  const bound = rankBound(r.method, r.config);
  const boundText = bound === null
    ? ""
    : ` First-order bound for ${r.method}: ${rankBoundLabel(r.method)} = ${bound}.`;
  if (names.length === 0) {
    return `<section id="effective-rank"><h2>Effective rank of ΔW</h2><div class="empty">No effective rank recorded.` +
      `</div></section>`;
  }
  const f = methodFigures(r);
  const rows = names.map((n) => {
    const e = r.effective_rank[n];
    const s = r.spectra?.[n];
    return `<tr><td class="name">${h(n)}</td><td>${fmtInt(e["rank_1e-2"])}</td><td>${
      fmtInt(e.energy90)
    }</td><td>${s ? fmtSig(s[0]) : "–"}</td><td>${s ? fmtInt(s.length) : "–"}</td></tr>`;
  }).join("");
  return `<section id="effective-rank"><h2>Effective rank of ΔW = W<sub>final</sub> − W<sub>initial</sub></h2>` +
    `<p class="note">rank@1e-2 counts σ<sub>i</sub> &gt; 10⁻²·σ<sub>1</sub>; energy90 is the ` +
    `fewest leading components holding 90% of Σσ².${h(boundText)}</p>` +
    `<div class="scroll" style="margin-top:10px"><table><tr><th>matrix</th><th>rank@1e-2</th>` +
    `<th>energy90</th><th>σ<sub>1</sub></th><th>min(in, out)</th></tr>` +
    `<tr class="total"><td>mean over ${names.length}</td><td>${
      fmtNum(f["mean_rank_1e-2"])
    }</td><td>${fmtNum(f.mean_energy90)}</td><td></td><td></td></tr>${rows}</table></div>` +
    `</section>`;
}

function spectraSection(r: RunReport): string {
  const spectra = r.spectra ?? {};
  const names = Object.keys(spectra);
  const title = `<h2>Singular-value spectra of ΔW</h2>`;
  if (names.length === 0) {
    return `<section id="spectra">${title}<div class="empty">No spectra recorded.</div></section>`;
  }
  const groups = new Map<string, Array<{ name: string; layer: number | null }>>();
  for (const n of names) {
    const p = parseMatrixName(n);
    const g = groups.get(p.kind) ?? [];
    g.push({ name: n, layer: p.layer });
    groups.set(p.kind, g);
  }
  const bound = rankBound(r.method, r.config);
  const zero: string[] = [];
  const charts = [...groups.entries()].map(([kind, members]) => {
    const shown = spread(members.sort((a, b) => (a.layer ?? 0) - (b.layer ?? 0)), 8);
    const items: Array<{ label: string; color: string }> = [];
    const lines: Line[] = [];
    shown.forEach((m, i) => {
      const pts = normalisedSpectrum(spectra[m.name]);
      if (pts.length === 0) {
        zero.push(m.name);
        return;
      }
      const c = rampColor(shown.length === 1 ? 0.3 : i / (shown.length - 1));
      lines.push({ series: `spectrum:${m.name}`, color: c, points: pts, width: 1.6 });
      items.push({ label: m.layer === null ? m.name : `layer ${m.layer}`, color: c });
    });
    const chart = lineChart({
      width: 520,
      height: 260,
      xLabel: "index i",
      yLabel: "σᵢ / σ₁",
      yLog: true,
      yFloor: SPECTRUM_FLOOR,
      title: `normalised singular values of ΔW, ${kind}`,
      empty: "ΔW is zero.",
      lines,
      yRules: [{ at: 1e-2, label: "10⁻² (rank threshold)" }],
      xRules: bound === null
        ? []
        : [{ at: bound, label: `${rankBoundLabel(r.method)} = ${bound}` }],
    });
    return `<div><h3>${h(kind)}</h3>${chart}${legend(items)}</div>`;
  });
  const zeroNote = zero.length > 0
    ? `<p class="note">ΔW is zero (nothing to plot) for: ${zero.map(h).join(", ")}.</p>`
    : "";
  return `<section id="spectra">${title}<p class="note">σ<sub>i</sub>/σ<sub>1</sub> on a log scale against ` +
    `the index, per projection; colours run from the first layer (dark) to the last (light). ` +
    `Values below 10⁻⁸ are drawn at 10⁻⁸.</p><div class="grid2">${
      charts.join("")
    }</div>${zeroNote}</section>`;
}

/** `--export-adapter`: the PEFT adapter's rank, and how close it comes to ΔW per matrix. */
function adapterSection(r: RunReport): string {
  const e = r.adapter_export;
  if (!e) return "";
  const names = Object.keys(e.matrices);
  const dropped = e.not_in_adapter ?? [];
  const rows = names.map((n) => {
    const m = e.matrices[n];
    return `<tr><td class="name">${h(n)}</td><td>${fmtInt(m.rank)}</td><td>${
      fmtPct(m.energy_kept)
    }</td><td>${fmtSig(m.rel_error)}</td><td>${fmtSig(m.rel_error_weight)}</td></tr>`;
  }).join("");
  const note = dropped.length > 0
    ? `<p class="note down">${dropped.length} other changed tensor(s) are not in the adapter ` +
      `(e.g. ${h(dropped[0].tensor)}); the adapter leaves these at the base model's values.</p>`
    : "";
  return `<section id="adapter"><h2>PEFT adapter <span class="note">${h(e.folder)}</span></h2>` +
    `<p class="note">ΔW of every adapted matrix truncated to rank ${fmtInt(e.rank)}${
      e.rank_source ? ` (${h(e.rank_source)})` : ""
    }, capped by min(in, out): energy kept Σσ²<sub>kept</sub>/‖ΔW‖², and the error ` +
    `‖W<sub>base</sub> + B·A − W<sub>final</sub>‖ relative to ‖ΔW‖ and to ‖W<sub>final</sub>‖.</p>` +
    `<div class="tiles">${
      [
        tile(fmtPct(e.energy_kept), "energy of ΔW kept"),
        tile(fmtSig(e.rel_error), "‖error‖ / ‖ΔW‖"),
        tile(fmtSig(e.rel_error_weight), "‖error‖ / ‖W‖"),
        tile(fmtSig(e.max_rel_error), "worst matrix, ‖error‖ / ‖ΔW‖"),
      ].join("")
    }</div>${note}` +
    `<div class="scroll" style="margin-top:10px"><table><tr><th>matrix</th><th>rank</th>` +
    `<th>energy kept</th><th>‖error‖/‖ΔW‖</th><th>‖error‖/‖W‖</th></tr>${rows}</table></div>` +
    `</section>`;
}

const SPLIT_COLORS = { compute: "#30638e", comm: "#e09f3e", update: "#00798c", other: "#c9ced6" };

function splitBar(per: NonNullable<MethodFigures["timing_per_step_ms"]>, scale: number): string {
  const other = Math.max(0, per.total - per.compute - per.comm - per.update);
  const parts: Array<[keyof typeof SPLIT_COLORS, number]> = [
    ["compute", per.compute],
    ["comm", per.comm],
    ["update", per.update],
    ["other", other],
  ];
  return `<div class="stack" style="width:${Math.max(2, 100 * scale).toFixed(1)}%">${
    parts.filter(([, v]) => v > 0 && isNum(v) && per.total > 0).map(([k, v]) =>
      `<i title="${k} ${fmtMs(v)}" style="width:${
        (100 * v / Math.max(per.total, 1e-12)).toFixed(2)
      }%;` +
      `background:${SPLIT_COLORS[k]}"></i>`
    ).join("")
  }</div>`;
}

function splitLegend(): string {
  return legend([
    { label: "compute (fwd/bwd/optimizer)", color: SPLIT_COLORS.compute },
    { label: "communication (gather + broadcast)", color: SPLIT_COLORS.comm },
    { label: "update (apply ΔW)", color: SPLIT_COLORS.update },
    { label: "other (driver, data, checks)", color: SPLIT_COLORS.other },
  ], false);
}

function memoryAmount(key: string, v: JsonValue): string {
  if (typeof v !== "number") return fmtJson(v);
  if (key.includes("bytes")) return `${fmtBytes(v)} (${fmtInt(v)} B)`;
  if (key.includes("floats")) return `${fmtInt(v)} floats (${fmtBytes(4 * v)} in f32)`;
  return fmtInt(v);
}

function performanceSection(r: RunReport, f: MethodFigures, color: string): string {
  const t = r.timing;
  const share = (v: number) => (t.total_ms > 0 ? ` (${(100 * v / t.total_ms).toFixed(1)}%)` : "");
  const timingRows = [
    ["total", t.total_ms],
    ["compute", t.compute_ms],
    ["communication", t.comm_ms],
    ["update", t.update_ms],
  ].map(([k, v]) =>
    `<tr><td>${k}</td><td>${fmtMs(v as number)}${share(v as number)}</td><td>${
      fmtMs(r.steps.length > 0 ? (v as number) / r.steps.length : NaN)
    }</td></tr>`
  ).join("");
  const bar = f.timing_per_step_ms ? splitBar(f.timing_per_step_ms, 1) + splitLegend() : "";
  const stepChart = lineChart({
    width: 520,
    height: 220,
    xLabel: "step",
    yLabel: "ms",
    title: "wall time per step",
    empty: "No steps recorded.",
    yZero: true,
    lines: [{
      series: "ms",
      color,
      points: r.steps.map((s): [number, number] => [s.step, s.ms]),
      width: 1.4,
      dots: r.steps.length <= 30,
    }],
  });
  const formula = r.bytes_per_step_formula;
  const ratio = (m: number | null, e: number | undefined) =>
    isNum(m) && isNum(e) && e > 0 ? `${(m / e).toFixed(3)}×` : "–";
  const bytesRows = `<tr><td>sent</td><td>${fmtBytes(f.bytes_sent_per_step)}</td><td>${
    fmtInt(f.bytes_sent_per_step)
  }</td><td>${formula ? fmtInt(formula.sent) : "–"}</td><td>${
    ratio(f.bytes_sent_per_step, formula?.sent)
  }</td></tr><tr><td>received</td><td>${fmtBytes(f.bytes_received_per_step)}</td><td>${
    fmtInt(f.bytes_received_per_step)
  }</td><td>${formula ? fmtInt(formula.received) : "–"}</td><td>${
    ratio(f.bytes_received_per_step, formula?.received)
  }</td></tr>`;
  const memory = r.memory
    ? Object.entries(r.memory).filter(([, v]) => v !== undefined).map(([k, v]) =>
      `<tr><td class="name">${h(k)}</td><td>${h(memoryAmount(k, v as JsonValue))}</td></tr>`
    ).join("")
    : "";
  return `<section id="performance"><h2>Performance</h2><div class="grid2"><div>` +
    `<h3>Time split (per step, mean)</h3>${bar}` +
    `<table style="margin-top:10px"><tr><th>phase</th><th>run total</th><th>per step</th></tr>` +
    `${timingRows}</table></div><div><h3>Wall time per step</h3>${stepChart}</div></div>` +
    `<h3>Payload bytes per step per worker</h3><table><tr><th>direction</th><th>measured</th>` +
    `<th>bytes</th><th>formula (docs/architecture.md §2)</th><th>measured / formula</th></tr>${bytesRows}` +
    `</table>${formula?.expression ? `<p class="note">Formula: ${h(formula.expression)}</p>` : ""}${
      memory
        ? `<h3>Memory per worker</h3><table><tr><th>what</th><th>amount</th></tr>${memory}</table>`
        : ""
    }</section>`;
}

// ---------------------------------------------------------------------------------------------
// Several runs

/** The comparison page of several runs (one per method), side by side. */
export function renderCompareHtml(reports: readonly RunReport[]): string {
  clipSeq = 0;
  if (reports.length === 0) {
    return page(
      "Method comparison",
      `<header><h1>Method comparison</h1></header><div class="empty">No runs to compare.</div>`,
    );
  }
  const labels = runLabels(reports);
  const colors = methodColors(reports.map((r) => r.method));
  const figs = reports.map(methodFigures);
  const runs = reports.map((r, i) => ({ r, label: labels[i], color: colors[i], f: figs[i] }));
  const models = [...new Set(reports.map((r) => describe(r.model)).filter((x) => x !== null))];
  const datas = [...new Set(reports.map((r) => describe(r.data)).filter((x) => x !== null))];
  const sub = [...models, ...datas] as string[];
  const header = `<header><h1>Method comparison</h1><p class="sub">${
    sub.map(h).join(" · ") || "&nbsp;"
  }</p><p>${runs.map((x) => methodBadge(x.label, x.color)).join(" ")}</p></header>`;
  return page(
    `Method comparison: ${labels.join(", ")}`,
    [
      header,
      `<section id="setup"><h2>Setup</h2>${sharedConfig(reports, labels)}</section>`,
      compareSummary(runs),
      compareLoss(runs),
      compareAccuracy(reports, runs),
      compareRank(reports, runs),
      compareSpectra(reports, runs),
      comparePerformance(runs),
    ].join("\n"),
  );
}

interface Run {
  r: RunReport;
  label: string;
  color: string;
  f: MethodFigures;
}

function sharedConfig(reports: readonly RunReport[], labels: readonly string[]): string {
  const keys = [...new Set(reports.flatMap((r) => Object.keys(r.config)))].sort();
  const same: Array<[string, string]> = [];
  const differ: string[] = [];
  for (const k of keys) {
    if (k === "method") continue;
    const vals = reports.map((r) => JSON.stringify(r.config[k] ?? null));
    if (vals.every((v) => v === vals[0])) {
      if (SUMMARY_KEYS.includes(k)) same.push([k, fmtJson(reports[0].config[k])]);
    } else differ.push(k);
  }
  const rows = differ.map((k) =>
    `<tr><td class="name">${h(k)}</td>${
      reports.map((r) => `<td>${h(fmtJson(r.config[k]))}</td>`).join("")
    }</tr>`
  ).join("");
  const table = differ.length === 0
    ? `<p class="note">All runs used the same flags apart from the method.</p>`
    : `<h3>Flags that differ</h3><div class="wide"><table><tr><th>flag</th>${
      labels.map((l) => `<th>${h(l)}</th>`).join("")
    }</tr>${rows}</table></div>`;
  return `<h3>Flags shared by every run</h3>${chips(same)}${table}`;
}

function compareSummary(runs: readonly Run[]): string {
  const best = (vals: Array<number | null>, high: boolean) => {
    const ok = vals.filter(isNum);
    return ok.length < 2 ? NaN : high ? Math.max(...ok) : Math.min(...ok);
  };
  const acc = runs.map((x) => x.f.accuracy?.overall ?? null);
  const rank = runs.map((x) => x.f["mean_rank_1e-2"]);
  const bestAcc = best(acc, true);
  const rows = runs.map((x, i) =>
    `<tr><td>${methodBadge(x.label, x.color)}</td>` +
    `<td${acc[i] === bestAcc ? ` class="best"` : ""}>${fmtPct(acc[i])}</td>` +
    `<td>${fmtSig(x.f.final_loss)}</td>` +
    `<td>${fmtNum(rank[i])}</td>` +
    `<td>${fmtNum(x.f.mean_energy90)}</td><td>${fmtInt(x.f.rank_bound)}</td>` +
    `<td>${fmtMs(x.f.step_ms_mean)}</td><td>${fmtBytes(x.f.bytes_sent_per_step)}</td>` +
    `<td>${fmtBytes(x.f.bytes_received_per_step)}</td>` +
    `<td>${fmtBytes(x.f.optimizer_bytes_per_worker)}</td></tr>`
  ).join("");
  return `<section id="summary"><h2>Summary</h2><div class="wide"><table><tr><th>method</th><th>accuracy after</th>` +
    `<th>final loss</th><th>rank@1e-2 (mean)</th><th>energy90 (mean)</th><th>rank bound</th>` +
    `<th>step time</th><th>sent / step</th><th>received / step</th><th>optimizer / worker</th>` +
    `</tr>${rows}</table></div></section>`;
}

function compareLoss(runs: readonly Run[]): string {
  const lines: Line[] = [];
  for (const x of runs) {
    const smooth = smoothLoss(x.r.steps.map((s) => s.loss));
    lines.push({
      series: `loss:${x.label}`,
      color: x.color,
      points: x.r.steps.map((s): [number, number] => [s.step, lossOf(s)]),
      width: 1,
      opacity: 0.22,
      markNonFinite: true,
    });
    lines.push({
      series: `loss-smoothed:${x.label}`,
      color: x.color,
      points: x.r.steps.map((s, i): [number, number] => [s.step, smooth[i]]),
      width: 2.4,
    });
  }
  const chart = lineChart({
    width: 1060,
    height: 340,
    xLabel: "step",
    yLabel: "training loss",
    title: "training loss per method",
    empty: "No steps recorded.",
    lines,
  });
  const lr = lineChart({
    width: 1060,
    height: 170,
    xLabel: "step",
    yLabel: "learning rate",
    title: "learning rate per method",
    empty: "No steps recorded.",
    yZero: true,
    lines: runs.map((x) => ({
      series: `lr:${x.label}`,
      color: x.color,
      points: x.r.steps.map((s): [number, number] => [s.step, s.lr]),
      width: 1.6,
    })),
  });
  return `<section id="training"><h2>Training loss</h2><p class="note">Thin: per step; thick: smoothed (EMA).` +
    `</p>${chart}${
      legend(runs.map((x) => ({ label: x.label, color: x.color })))
    }<h3>Learning-rate schedule</h3>${lr}</section>`;
}

function compareAccuracy(reports: readonly RunReport[], runs: readonly Run[]): string {
  const tasks = taskNames(reports);
  if (runs.every((x) => !x.r.eval.after && !x.r.eval.before)) {
    return `<section id="accuracy"><h2>Accuracy</h2><div class="empty">Not evaluated.</div></section>`;
  }
  const base = runs.find((x) => x.r.eval.before)?.r.eval.before ?? null;
  const bases = new Set(
    runs.filter((x) => x.r.eval.before).map((x) => JSON.stringify(x.r.eval.before!.tasks)),
  );
  const row = (name: string, pick: (s: NonNullable<RunReport["eval"]["after"]>) => number) => {
    const vals = runs.map((x) => (x.r.eval.after ? pick(x.r.eval.after) : undefined));
    const ok = vals.filter(isNum);
    const top = ok.length >= 2 && new Set(ok).size > 1 ? Math.max(...ok) : NaN;
    return `<td class="name">${h(name)}</td>${
      base ? accCell(pick(base), "#98a2b3") : "<td>–</td>"
    }${vals.map((v, i) => accCell(v, runs[i].color, v === top)).join("")}`;
  };
  const rows = tasks.map((t) => `<tr>${row(t, (s) => s.tasks[t])}</tr>`);
  rows.push(`<tr class="total">${row("overall", (s) => s.overall)}</tr>`);
  const note = bases.size > 1
    ? `<p class="note">The runs' before-fine-tuning scores differ; the first run's are shown.</p>`
    : "";
  return `<section id="accuracy"><h2>Accuracy per task <span class="note">exact match, after fine-tuning` +
    `</span></h2><div class="wide"><table><tr><th>task</th><th>base model</th>${
      runs.map((x) => `<th>${h(x.label)}</th>`).join("")
    }</tr>${rows.join("")}</table></div>${note}</section>`;
}

function compareRank(reports: readonly RunReport[], runs: readonly Run[]): string {
  const names = [...new Set(reports.flatMap((r) => Object.keys(r.effective_rank)))];
  if (names.length === 0) {
    return `<section id="effective-rank"><h2>Effective rank of ΔW</h2><div class="empty">No effective rank ` +
      `recorded.</div></section>`;
  }
  const head = runs.map((x) => `<th>${h(x.label)}<br>rank · e90</th>`).join("");
  const cell = (r: RunReport, n: string) => {
    const e = r.effective_rank[n];
    return e ? `<td>${fmtInt(e["rank_1e-2"])} · ${fmtInt(e.energy90)}</td>` : "<td>–</td>";
  };
  const mean = `<tr class="total"><td>mean over matrices</td>${
    runs.map((x) => `<td>${fmtNum(x.f["mean_rank_1e-2"])} · ${fmtNum(x.f.mean_energy90)}</td>`)
      .join("")
  }</tr><tr><td>first-order bound</td>${
    runs.map((x) => `<td>${fmtInt(x.f.rank_bound)}</td>`).join("")
  }</tr>`;
  const rows = names.map((n) =>
    `<tr><td class="name">${h(n)}</td>${runs.map((x) => cell(x.r, n)).join("")}</tr>`
  ).join("");
  return `<section id="effective-rank"><h2>Effective rank of ΔW per method</h2><p class="note">rank@1e-2 · ` +
    `energy90 per matrix (docs/architecture.md §2 bounds: HD-PiSSA ≈ 2Kr, PiSSA ≤ 2r, LoRA ≤ r).</p>` +
    `<div class="scroll" style="margin-top:10px"><table><tr><th>matrix</th>${head}</tr>${mean}` +
    `${rows}</table></div></section>`;
}

/** Matrices to overlay: the last layer's of each kind (the paper shows one such matrix). */
function pickCompareMatrices(reports: readonly RunReport[]): string[] {
  const counts = new Map<string, number>();
  for (const r of reports) {
    for (const n of Object.keys(r.spectra ?? {})) counts.set(n, (counts.get(n) ?? 0) + 1);
  }
  const most = Math.max(0, ...counts.values());
  const common = [...counts.keys()].filter((n) => counts.get(n) === most);
  const byKind = new Map<string, { name: string; layer: number }>();
  const loose: string[] = [];
  for (const n of common) {
    const p = parseMatrixName(n);
    if (p.layer === null) {
      loose.push(n);
      continue;
    }
    const cur = byKind.get(p.kind);
    if (!cur || p.layer > cur.layer) byKind.set(p.kind, { name: n, layer: p.layer });
  }
  return [...[...byKind.values()].map((v) => v.name), ...spread(loose, 6)].slice(0, 8);
}

function compareSpectra(reports: readonly RunReport[], runs: readonly Run[]): string {
  const names = pickCompareMatrices(reports);
  const title = `<h2>Singular-value spectra of ΔW per method</h2>`;
  if (names.length === 0) {
    return `<section id="spectra">${title}<div class="empty">No spectra recorded.</div></section>`;
  }
  const xRules = runs.filter((x) => x.f.rank_bound !== null).map((x) => ({
    at: x.f.rank_bound!,
    label: `${x.label}: ${rankBoundLabel(x.r.method)} = ${x.f.rank_bound}`,
    color: x.color,
  }));
  const charts = names.map((n) => {
    const lines: Line[] = [];
    for (const x of runs) {
      const s = x.r.spectra?.[n];
      if (s) {
        lines.push({
          series: `spectrum:${x.label}:${n}`,
          color: x.color,
          points: normalisedSpectrum(s),
          width: 1.9,
        });
      }
    }
    return `<div><h3 class="name">${h(n)}</h3>${
      lineChart({
        width: 520,
        height: 270,
        xLabel: "index i",
        yLabel: "σᵢ / σ₁",
        yLog: true,
        yFloor: SPECTRUM_FLOOR,
        title: `normalised singular values of ΔW for ${n}`,
        empty: "ΔW is zero in every run.",
        lines,
        xRules,
        yRules: [{ at: 1e-2, label: "10⁻²" }],
      })
    }</div>`;
  });
  return `<section id="spectra">${title}<p class="note">σ<sub>i</sub>/σ<sub>1</sub> on a log scale against ` +
    `the index (as the paper's Fig. 3/8); dashed verticals are each method's first-order rank ` +
    `bound. Values below 10⁻⁸ are drawn at 10⁻⁸.</p>${
      legend(runs.map((x) => ({ label: x.label, color: x.color })), false)
    }<div class="grid2">${charts.join("")}</div></section>`;
}

function comparePerformance(runs: readonly Run[]): string {
  const maxPer = Math.max(0, ...runs.map((x) => x.f.timing_per_step_ms?.total ?? 0));
  const bars = runs.map((x) => {
    const per = x.f.timing_per_step_ms;
    return `<div class="split"><span>${methodBadge(x.label, x.color)}</span>${
      per && maxPer > 0 ? splitBar(per, per.total / maxPer) : "<span>–</span>"
    }<span>${fmtMs(per?.total)} / step</span></div>`;
  }).join("");
  const rows = runs.map((x) => {
    const p = x.f.timing_per_step_ms;
    return `<tr><td>${methodBadge(x.label, x.color)}</td><td>${fmtMs(x.f.step_ms_mean)}</td>` +
      `<td>${fmtMs(x.f.step_ms_median)}</td><td>${fmtMs(p?.compute)}</td><td>${
        fmtMs(p?.comm)
      }</td><td>${fmtMs(p?.update)}</td><td>${fmtBytes(x.f.bytes_sent_per_step)}</td><td>${
        fmtBytes(x.f.formula_bytes_sent_per_step)
      }</td><td>${fmtBytes(x.f.bytes_received_per_step)}</td><td>${
        fmtBytes(x.f.formula_bytes_received_per_step)
      }</td><td>${fmtBytes(x.f.optimizer_bytes_per_worker)}</td></tr>`;
  }).join("");
  return `<section id="cost"><h2>Cost per step</h2>${bars}${splitLegend()}` +
    `<div class="wide"><table style="margin-top:12px"><tr><th>method</th><th>step mean</th>` +
    `<th>step median</th>` +
    `<th>compute</th><th>comm</th><th>update</th><th>sent</th><th>sent (formula)</th>` +
    `<th>received</th><th>received (formula)</th><th>optimizer / worker</th></tr>${rows}` +
    `</table></div><p class="note">compute, comm and update are run totals divided by the number of ` +
    `steps; bytes are payload bytes per step per worker.</p></section>`;
}

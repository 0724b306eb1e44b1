/**
 * The dashboard's page: one HTML document with its CSS and script inline, nothing loaded from
 * anywhere else (it works offline, and its Content-Security-Policy allows only this script, by
 * hash). The script follows `/api/events` and draws the cluster (nodes, actors, events) and the
 * training run (step of total, loss, learning rate, tokens/s, bytes per step, the split of a
 * step's time, ETA, evaluations, ΔW's spectra at the end) as inline SVG.
 *
 * Elements tests read: `#step` ("7 / 12"), `#loss-chart svg[data-points]`, `#actors tr[data-actor]`
 * (`data-state`, `data-inc`), `#events li[data-type]` (`data-actor`, `data-kind`), `#conn`
 * (`data-state` live / lost).
 * @module
 */
import { PAGE_SCRIPT } from "./page_script.ts";

export { PAGE_SCRIPT };

const CSS = `
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f6f7f9;--card:#fff;--accent:#d1495b;
--grid:#eceef2;--good:#1a7f4b;--bad:#b42318;--warn:#b54708;--info:#1f5fa8;color-scheme:light}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:20px 24px 40px}
header{display:flex;align-items:baseline;gap:14px;flex-wrap:wrap}
header h1{font-size:22px;margin:0;letter-spacing:-.01em}
header .sub{color:var(--muted)}
.conn{font-size:12.5px;border-radius:999px;padding:1px 10px;border:1px solid var(--line);
background:var(--card)}
.conn::before{content:"";display:inline-block;width:8px;height:8px;border-radius:50%;
margin-right:6px;background:var(--muted)}
.conn[data-state=live]::before{background:var(--good)}
.conn[data-state=lost]::before{background:var(--bad)}
h2{font-size:16px;margin:0 0 10px;display:flex;gap:10px;align-items:baseline}
h2 small{font-weight:400;color:var(--muted);font-size:12.5px}
h3{font-size:13px;margin:12px 0 4px;color:var(--muted);font-weight:600}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:14px 18px;margin:14px 0}
.cols{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:14px}
@media (max-width:1000px){.cols{grid-template-columns:1fr}}
.cols>section{margin:0}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(104px,1fr));gap:8px;margin:10px 0}
.tile{border:1px solid var(--line);border-radius:8px;padding:6px 10px;min-width:0}
.tile.w2{grid-column:span 2}
.tile b{display:block;font-size:18px;font-variant-numeric:tabular-nums;white-space:nowrap;
overflow:hidden;text-overflow:ellipsis}
.tile span{color:var(--muted);font-size:11.5px}
.progress{height:8px;background:var(--grid);border-radius:4px;overflow:hidden}
.progress i{display:block;height:100%;width:0;background:var(--accent);transition:width .3s}
.charts{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:4px 18px}
.charts .wide{grid-column:span 2}
@media (max-width:900px){.charts{grid-template-columns:1fr}.charts .wide{grid-column:auto}}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:4px 7px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{font-weight:600;color:var(--muted);font-size:12px}
th:first-child,td:first-child{text-align:left}
td.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
tr.gone td{color:var(--muted)}
.badge{display:inline-block;border-radius:6px;padding:0 7px;font-size:12px;font-weight:600;
color:#fff;background:var(--muted)}
.badge.up{background:var(--good)}.badge.down{background:var(--bad)}
.badge.restarting{background:var(--warn)}
.chart{display:block;width:100%;height:auto}
.chart .grid{stroke:var(--grid);stroke-width:1}
.chart .frame{fill:none;stroke:#c9ced6;stroke-width:1}
.chart .tick{fill:var(--muted);font-size:10.5px}
.chart .axis{fill:var(--fg);font-size:11.5px}
.chart .series{fill:none;stroke-linejoin:round;stroke-linecap:round}
.chart .rule{stroke:#98a2b3;stroke-width:1;stroke-dasharray:4 3}
.chart .rule-label{fill:var(--muted);font-size:10.5px}
.empty{padding:22px;text-align:center;color:var(--muted);border:1px dashed var(--line);
border-radius:8px;font-size:12.5px}
.stack{display:flex;height:18px;border-radius:5px;overflow:hidden;background:var(--grid);
margin:4px 0}
.stack i{display:block;height:100%}
.legend{display:flex;flex-wrap:wrap;gap:2px 12px;font-size:12px;color:var(--muted)}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;
vertical-align:-1px}
ol.events{list-style:none;margin:0;padding:0;max-height:560px;overflow:auto;font-size:12.5px}
ol.events li{padding:3px 2px;border-bottom:1px solid var(--line);display:grid;
grid-template-columns:62px 1fr;gap:8px}
ol.events li time{color:var(--muted);font-variant-numeric:tabular-nums}
ol.events li.bad span{color:var(--bad);font-weight:600}
ol.events li.good span{color:var(--good);font-weight:600}
ol.events li.warn span{color:var(--warn)}
ol.events li.info span{color:var(--info)}
.note{color:var(--muted);font-size:12px;margin:4px 0 0}
`;

const BODY = `
<header>
  <h1>HD-PiSSA dashboard</h1>
  <span class="sub" id="sys">system –</span>
  <span class="conn" id="conn" data-state="connecting">connecting…</span>
  <span class="sub" id="clock"></span>
</header>
<section id="training">
  <h2>Training <small id="job">no run yet</small></h2>
  <div class="progress" title="steps done"><i id="progress"></i></div>
  <div class="tiles">
    <div class="tile"><b id="step">– / –</b><span>step</span></div>
    <div class="tile"><b id="loss">–</b><span>loss</span></div>
    <div class="tile"><b id="lr">–</b><span>learning rate</span></div>
    <div class="tile"><b id="tps">–</b><span>tokens/s</span></div>
    <div class="tile"><b id="msstep">–</b><span>per step</span></div>
    <div class="tile"><b id="eta">–</b><span>ETA (training)</span></div>
    <div class="tile w2"><b id="bytes">–</b><span>sent / received per worker per step</span></div>
    <div class="tile"><b id="gen">–</b><span>generation · rollbacks</span></div>
    <div class="tile"><b id="refused">–</b><span>refused · re-syncs</span></div>
  </div>
  <div class="charts">
    <div class="wide"><h3>Loss</h3><div id="loss-chart"></div></div>
    <div><h3>Learning rate</h3><div id="lr-chart"></div></div>
    <div><h3>Tokens/s</h3><div id="tps-chart"></div></div>
    <div><h3>Where a step's time goes (last 20 steps)</h3><div id="split"></div></div>
    <div><h3>Evaluation (exact match)</h3><div id="eval"></div></div>
  </div>
  <h3>Singular values of ΔW (σᵢ / σ₁, at the end of the run)</h3><div id="spectra"></div>
  <p class="note" id="earlier"></p>
</section>
<div class="cols">
  <section id="cluster">
    <h2>Cluster <small id="cluster-sum"></small></h2>
    <h3>Nodes</h3><table id="nodes"></table>
    <h3>Actors</h3><table id="actors"></table>
  </section>
  <section>
    <h2>Events <small>newest first</small></h2>
    <ol class="events" id="events"></ol>
  </section>
</div>
`;

/** The page, as served at `/`. */
export function renderPage(): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>HD-PiSSA dashboard</title><style>${CSS}</style></head>
<body><main>${BODY}</main>
<script>${PAGE_SCRIPT}</script>
</body></html>
`;
}

import assert from "node:assert/strict";
import { Rng } from "../core/rng.ts";
import {
  configFromFlags,
  effectiveRankFields,
  readReportJson,
  ReportError,
  type RunReport,
  validateReport,
  writeReportJson,
} from "../train/report/report.ts";
import {
  escapeHtml,
  renderCompareHtml,
  renderReportHtml,
  smoothLoss,
} from "../train/report/html.ts";
import {
  compareJson,
  compareTable,
  formatBytes,
  methodFigures,
  writeCompareJson,
} from "../train/report/compare_table.ts";

const KINDS = [
  "self_attn.q_proj",
  "self_attn.k_proj",
  "self_attn.v_proj",
  "self_attn.o_proj",
  "mlp.gate_proj",
  "mlp.up_proj",
  "mlp.down_proj",
];

/**
 * A report shaped like a real run, with random figures: a decaying noisy loss, a warmup +
 * cosine lr, per-task accuracies and, per matrix, a ΔW spectrum whose tail depends on the
 * method's rank bound (HD-PiSSA spreads over many components, LoRA stops at r).
 */
export function sampleReport(
  method: string,
  opts: { steps?: number; layers?: number; seed?: number; dim?: number } = {},
): RunReport {
  const steps = opts.steps ?? 60, layers = opts.layers ?? 2, dim = opts.dim ?? 48;
  const rng = new Rng(opts.seed ?? 7);
  const K = 4, r = 4;
  const warm = Math.ceil(0.1 * steps);
  const stepRecords = [];
  for (let t = 0; t < steps; t++) {
    const lr = t < warm
      ? 2e-4 * t / warm
      : 2e-4 * 0.5 * (1 + Math.cos(Math.PI * (t - warm) / Math.max(1, steps - warm)));
    stepRecords.push({
      step: t,
      loss: 0.6 + 2.4 * Math.exp(-t / (steps / 4)) + 0.25 * rng.float(),
      lr,
      ms: 700 + 200 * rng.float(),
      bytes_sent: 7168 * (1 + (rng.float() < 0.05 ? 1 : 0)),
      bytes_received: 28672,
    });
  }
  const bound = method === "hd-pissa"
    ? 2 * K * r
    : method === "pissa"
    ? 2 * r
    : method === "lora"
    ? r
    : dim;
  const effective_rank: RunReport["effective_rank"] = {};
  const spectra: Record<string, number[]> = {};
  for (let l = 0; l < layers; l++) {
    for (const kind of KINDS) {
      const name = `model.layers.${l}.${kind}.weight`;
      const s: number[] = [];
      const decay = method === "full" ? 18 : 8;
      for (let i = 0; i < dim; i++) {
        const head = Math.exp(-i / decay) * (0.8 + 0.4 * rng.float());
        s.push(i < bound ? head : 1e-7 * (1 + rng.float()) * Math.exp(-i / 40));
      }
      s.sort((a, b) => b - a);
      const scale = 0.01 + 0.05 * rng.float();
      spectra[name] = s.map((v) => v * scale);
      const sig = spectra[name];
      const total = sig.reduce((a, v) => a + v * v, 0);
      let acc = 0, e90 = 0;
      while (acc < 0.9 * total) acc += sig[e90++] ** 2;
      effective_rank[name] = {
        "rank_1e-2": sig.filter((v) => v > 1e-2 * sig[0]).length,
        energy90: e90,
      };
    }
  }
  const tasks = ["arith", "code", "facts", "strings"];
  const split = (base: number) => {
    const t: Record<string, number> = {};
    const counts: Record<string, { n: number; correct: number }> = {};
    let n = 0, correct = 0;
    for (const name of tasks) {
      const c = Math.min(50, Math.round(50 * (base + 0.3 * rng.float())));
      t[name] = c / 50;
      counts[name] = { n: 50, correct: c };
      n += 50;
      correct += c;
    }
    return { overall: correct / n, tasks: t, n, correct, counts };
  };
  const total = stepRecords.reduce((a, s) => a + s.ms, 0);
  return {
    method,
    config: configFromFlags({
      method,
      workers: K,
      rank: r,
      alpha: r,
      targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
      mute: "exact",
      aggregate: "mean",
      optimizer: "adamw",
      lr: 2e-4,
      schedule: "cosine",
      warmupRatio: 0.1,
      "batch-size": 16,
      microBatch: 2,
      seqLen: 96,
      maxSteps: steps,
      seed: 0,
      out: `runs/sample-${method}`,
    }),
    steps: stepRecords,
    eval: { before: split(0.02), after: split(method === "hd-pissa" ? 0.45 : 0.3) },
    effective_rank,
    timing: {
      total_ms: total,
      compute_ms: 0.7 * total,
      comm_ms: 0.12 * total,
      update_ms: 0.1 * total,
    },
    spectra,
    memory: { optimizer_floats_per_worker: 2 * layers * 7 * 2 * dim * r },
    bytes_per_step_formula: {
      sent: 7168,
      received: 28672,
      expression: "4 B · Σ(in+out)·r sent; K times that received",
    },
    started_at: "2025-01-02T10:00:00.000Z",
    finished_at: "2025-01-02T10:12:34.000Z",
    model: { name: "tiny-llama", path: "models/tiny" },
    data: "data/bench/train.jsonl",
  };
}

function clone<T>(x: T): T {
  return structuredClone(x);
}

function freshSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

const Q0 = "model.layers.0.self_attn.q_proj.weight";
const DELETE = Symbol("delete");

/** A deep copy of `base` with the value at `path` replaced (or deleted). */
function mutated(base: RunReport, path: Array<string | number>, value: unknown): unknown {
  const copy = clone(base) as unknown;
  let o = copy as Record<string | number, unknown>;
  for (const p of path.slice(0, -1)) o = o[p] as Record<string | number, unknown>;
  const last = path[path.length - 1];
  if (value === DELETE) delete o[last];
  else o[last] = value;
  return copy;
}

function expectReportError(json: unknown, key: string) {
  assert.throws(
    () => validateReport(json),
    (e: unknown) => {
      assert.ok(e instanceof ReportError, `expected ReportError, got ${e}`);
      assert.equal(e.key, key);
      assert.ok(e.message.includes(key), e.message);
      return true;
    },
  );
}

Deno.test("report schema accepts a full report and keeps unknown keys", () => {
  const r = sampleReport("hd-pissa", { seed: freshSeed() }) as RunReport & Record<string, unknown>;
  r.extra_top = { note: "kept" };
  (r.steps[0] as unknown as Record<string, unknown>).grad_norm = 1.5;
  const v = validateReport(clone(r));
  assert.deepEqual(v, r);
  assert.deepEqual((v as unknown as Record<string, unknown>).extra_top, { note: "kept" });
});

Deno.test("report schema rejects bad reports and names the key", () => {
  const base = sampleReport("lora", { seed: freshSeed() });
  const q0 = base.spectra![Q0];
  const cases: Array<[string, Array<string | number>, unknown]> = [
    ["method", ["method"], DELETE],
    ["steps[2].lr", ["steps", 2, "lr"], -1],
    ["steps[0].lr", ["steps", 0, "lr"], NaN],
    ["steps[0].bytes_sent", ["steps", 0, "bytes_sent"], "12"],
    ["steps[1].step", ["steps", 1, "step"], base.steps[0].step],
    ["steps[3].step", ["steps", 3, "step"], 2.5],
    ['config["Batch-Size"]', ["config", "Batch-Size"], 16],
    ["config.seed", ["config", "seed"], DELETE],
    ["eval.after.tasks.arith", ["eval", "after", "tasks", "arith"], 1.5],
    ["eval.before.overall", ["eval", "before", "overall"], DELETE],
    ["eval.after", ["eval", "after"], DELETE],
    [`effective_rank["${Q0}"]["rank_1e-2"]`, ["effective_rank", Q0, "rank_1e-2"], 2.5],
    [`effective_rank["${Q0}"].energy90`, ["effective_rank", Q0, "energy90"], DELETE],
    ["timing.comm_ms", ["timing", "comm_ms"], DELETE],
    ["timing", ["timing"], DELETE],
    [`spectra["${Q0}"][3]`, ["spectra", Q0, 3], q0[2] * 2],
    [`spectra["${Q0}"][0]`, ["spectra", Q0, 0], -1],
    ["started_at", ["started_at"], "yesterday"],
    ["memory.optimizer_floats_per_worker", ["memory", "optimizer_floats_per_worker"], -4],
    ["bytes_per_step_formula.received", ["bytes_per_step_formula", "received"], DELETE],
  ];
  for (const [key, path, value] of cases) expectReportError(mutated(base, path, value), key);
  expectReportError(null, "(root)");
  expectReportError([], "(root)");
});

Deno.test("a diverged run still validates; non-finite losses are written as null", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = sampleReport("full", { steps: 5, seed: freshSeed() });
    r.steps[2].loss = NaN;
    r.steps[3].loss = Infinity;
    validateReport(r);
    const path = `${dir}/report.json`;
    await writeReportJson(path, r);
    const text = await Deno.readTextFile(path);
    assert.ok(text.startsWith('{\n  "method"'), "pretty JSON");
    const back = await readReportJson(path);
    assert.equal(back.steps[2].loss, null);
    assert.equal(back.steps[3].loss, null);
    assert.equal(back.steps[4].loss, r.steps[4].loss);
    assert.deepEqual(back.spectra, r.spectra);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeReportJson replaces atomically, refuses bad reports, leaves no temp files", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/report.json`;
    const a = sampleReport("pissa", { steps: 4, seed: freshSeed() });
    await writeReportJson(path, a);
    const b = sampleReport("lora", { steps: 7, seed: freshSeed() });
    await writeReportJson(path, b);
    assert.deepEqual(await readReportJson(path), JSON.parse(JSON.stringify(b)));
    const bad = mutated(b, ["steps", 1, "ms"], -5);
    await assert.rejects(() => writeReportJson(path, bad as RunReport), ReportError);
    assert.equal((await readReportJson(path)).method, "lora", "old report left in place");
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names, ["report.json"]);
    await Deno.writeTextFile(`${dir}/broken.json`, "{ not json");
    await assert.rejects(() => readReportJson(`${dir}/broken.json`), ReportError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("configFromFlags: snake_case keys, undefined dropped, bad values refused", () => {
  assert.deepEqual(
    configFromFlags({
      "batch-size": 8,
      microBatch: 2,
      seed: 3,
      resume: undefined,
      targets: ["q_proj", "v_proj"],
      mute: "exact",
      clip: null,
    }),
    {
      batch_size: 8,
      micro_batch: 2,
      seed: 3,
      targets: ["q_proj", "v_proj"],
      mute: "exact",
      clip: null,
    },
  );
  assert.throws(
    () => configFromFlags({ lr: Infinity }),
    (e: unknown) => e instanceof ReportError && e.key === "config.lr",
  );
  assert.throws(() => configFromFlags({ hook: () => 1 }), ReportError);
  assert.throws(() => configFromFlags({ when: new Date() }), ReportError);
});

Deno.test("effectiveRankFields splits results into effective_rank and spectra", () => {
  const rng = new Rng(freshSeed());
  const spectrum = Float64Array.from({ length: 6 }, () => rng.float()).sort().reverse();
  const f = effectiveRankFields({
    a: { "rank_1e-2": 6, energy90: 4, spectrum },
    b: { "rank_1e-2": 0, energy90: 0 },
  });
  assert.deepEqual(f.effective_rank, {
    a: { "rank_1e-2": 6, energy90: 4 },
    b: { "rank_1e-2": 0, energy90: 0 },
  });
  assert.deepEqual(f.spectra, { a: Array.from(spectrum) });
  assert.ok(Array.isArray(f.spectra.a));
  assert.throws(
    () => effectiveRankFields({ "m.q": { "rank_1e-2": 1, energy90: 1, spectrum: [1, NaN] } }),
    (e: unknown) => e instanceof ReportError && e.key === 'spectra["m.q"][1]',
  );
});

/** Coordinates in the `points` of every polyline of one series. */
function seriesPoints(html: string, series: string): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const re = /<polyline class="series" data-series="([^"]*)"[^>]* points="([^"]*)"/g;
  for (const m of html.matchAll(re)) {
    if (m[1] !== series) continue;
    for (const p of m[2].split(" ")) {
      const [x, y] = p.split(",").map(Number);
      assert.ok(Number.isFinite(x) && Number.isFinite(y), `bad point ${p}`);
      out.push([x, y]);
    }
  }
  return out;
}

function assertSelfContained(html: string) {
  assert.ok(html.startsWith("<!doctype html>"));
  assert.doesNotMatch(html, /https?:\/\//i);
  assert.doesNotMatch(html, /<script/i);
  assert.doesNotMatch(html, /<link/i);
  assert.doesNotMatch(html, /@import/i);
  assert.doesNotMatch(html, /\ssrc=/i);
  assert.doesNotMatch(html, /url\((?!#clip)/i);
  assert.doesNotMatch(html, /NaN|Infinity|undefined|\[object/);
}

Deno.test("report.html has every section and one plotted point per step", () => {
  const seed = freshSeed();
  const steps = 20 + (seed % 50);
  const r = sampleReport("hd-pissa", { steps, seed, layers: 3 });
  const html = renderReportHtml(r);
  assertSelfContained(html);
  for (const id of ["training", "evaluation", "effective-rank", "spectra", "performance"]) {
    assert.match(html, new RegExp(`<section id="${id}">`), id);
  }
  assert.equal(seriesPoints(html, "loss").length, steps, `seed ${seed}`);
  assert.equal(seriesPoints(html, "loss-smoothed").length, steps);
  assert.equal(seriesPoints(html, "lr").length, steps);
  assert.equal(seriesPoints(html, "ms").length, steps);
  // Points run left to right in step order, and y is an affine, decreasing map of the loss
  // (SVG y grows downwards), to the 0.1 px the coordinates are rounded to.
  const pts = seriesPoints(html, "loss");
  for (let i = 1; i < pts.length; i++) assert.ok(pts[i][0] > pts[i - 1][0]);
  const losses = r.steps.map((s) => s.loss as number);
  const lo = losses.indexOf(Math.min(...losses)), hi = losses.indexOf(Math.max(...losses));
  assert.ok(pts[lo][1] > pts[hi][1]);
  for (let i = 0; i < steps; i++) {
    const want = (losses[i] - losses[lo]) / (losses[hi] - losses[lo]);
    const got = (pts[i][1] - pts[lo][1]) / (pts[hi][1] - pts[lo][1]);
    assert.ok(Math.abs(got - want) < 0.2 / Math.abs(pts[hi][1] - pts[lo][1]), `step ${i}`);
  }
  // One spectrum line per matrix, each as long as its spectrum.
  for (const [name, s] of Object.entries(r.spectra!)) {
    assert.equal(seriesPoints(html, `spectrum:${name}`).length, s.length, name);
  }
  // Evaluation figures, formatted independently.
  for (const [task, acc] of Object.entries(r.eval.after!.tasks)) {
    assert.ok(html.includes(`${(100 * acc).toFixed(1)}%`), task);
    assert.ok(html.includes(`>${task}<`), task);
  }
  for (const [name, e] of Object.entries(r.effective_rank)) {
    assert.ok(
      html.includes(`${escapeHtml(name)}</td><td>${e["rank_1e-2"]}</td><td>${e.energy90}<`),
    );
  }
});

const EVIL = `<script>alert("x")</script>`;

function evilReport(): RunReport {
  const r = sampleReport(EVIL, { steps: 6, seed: freshSeed(), layers: 1 });
  const name = `model.layers.0.${EVIL}.weight`;
  r.effective_rank[name] = { "rank_1e-2": 1, energy90: 1 };
  r.spectra![name] = [2, 1];
  r.eval.after!.tasks[`<img src=x onerror=alert(1)>`] = 0.5;
  r.config.out = `"></style><script>alert(2)</script>`;
  r.model = `a & b <em onclick=1>`;
  r.data = { path: `'><svg onload=alert(3)>` };
  return r;
}

Deno.test("every string from a report is escaped", () => {
  const r = evilReport();
  for (
    const html of [
      renderReportHtml(r),
      renderCompareHtml([r, sampleReport("lora", { steps: 3, seed: freshSeed() })]),
    ]
  ) {
    assert.doesNotMatch(html, /<script|<img|<svg onload|<em/i);
    assert.ok(html.includes("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"));
    assert.ok(html.includes("a &amp; b &lt;em onclick=1&gt;"));
    assert.equal(html.match(/<\/style>/g)?.length, 1);
  }
  assert.equal(escapeHtml(`<a href='x'>&"`), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;");
});

Deno.test("degenerate reports render: no steps, one step, NaN losses, zero spectra", () => {
  const empty = sampleReport("lora", { steps: 0, seed: freshSeed(), layers: 1 });
  empty.eval = { before: null, after: null };
  empty.effective_rank = {};
  delete empty.spectra;
  delete empty.memory;
  delete empty.bytes_per_step_formula;
  validateReport(empty);
  let html = renderReportHtml(empty);
  assertSelfContained(html);
  assert.ok(html.includes("No steps recorded."));
  assert.ok(html.includes("Not evaluated."));
  assert.ok(html.includes("No spectra recorded."));

  const one = sampleReport("pissa", { steps: 1, seed: freshSeed(), layers: 1 });
  html = renderReportHtml(one);
  assertSelfContained(html);
  assert.equal(seriesPoints(html, "loss").length, 1);
  assert.match(html, /<circle /);

  const nan = sampleReport("full", { steps: 10, seed: freshSeed(), layers: 1 });
  nan.steps[4].loss = NaN;
  nan.steps[7].loss = null;
  for (const s of Object.values(nan.spectra!)) s.fill(0);
  html = renderReportHtml(nan);
  assertSelfContained(html);
  assert.equal(seriesPoints(html, "loss").length, 8);
  assert.equal(html.match(/class="nonfinite"/g)?.length, 2);
  assert.ok(html.includes("2 step(s) had a non-finite loss"));
  assert.ok(html.includes("ΔW is zero"));

  const allNan = sampleReport("full", { steps: 3, seed: freshSeed(), layers: 1 });
  for (const s of allNan.steps) s.loss = NaN;
  assertSelfContained(renderReportHtml(allNan));
  assertSelfContained(renderCompareHtml([empty, one, nan, allNan]));
  assertSelfContained(renderCompareHtml([]));
});

Deno.test("long runs are thinned to at most 2000 points per series", () => {
  const r = sampleReport("hd-pissa", { steps: 5001, seed: freshSeed(), layers: 1, dim: 8 });
  r.steps[1234].loss = NaN;
  const html = renderReportHtml(r);
  const pts = seriesPoints(html, "loss");
  assert.ok(pts.length <= 2001 && pts.length >= 1500, `${pts.length} points`);
  assert.equal(html.match(/class="nonfinite"/g)?.length, 1, "a NaN is marked even if thinned");
  // First and last steps are kept, so the curve spans the whole axis.
  const xs = pts.map((p) => p[0]);
  const frame = /<rect class="frame" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"/.exec(html)!;
  assert.equal(Math.min(...xs), Number(frame[1]));
  assert.equal(Math.max(...xs), Number(frame[1]) + Number(frame[2]));
  assert.ok(html.length < 400_000, `${html.length} bytes`);
});

Deno.test("compare.html overlays one curve and one spectrum per method", () => {
  const methods = ["hd-pissa", "pissa", "lora", "full", "lora"];
  const rs = methods.map((m) => sampleReport(m, { steps: 15, seed: freshSeed(), layers: 2 }));
  const html = renderCompareHtml(rs);
  assertSelfContained(html);
  const labels = ["hd-pissa", "pissa", "lora", "full", "lora (2)"];
  for (const id of ["summary", "training", "accuracy", "effective-rank", "spectra", "cost"]) {
    assert.match(html, new RegExp(`<section id="${id}">`), id);
  }
  for (const l of labels) {
    assert.equal(seriesPoints(html, `loss-smoothed:${l}`).length, 15, l);
    // The paper's figure: the last layer's matrices, one line per method.
    const name = "model.layers.1.self_attn.k_proj.weight";
    assert.equal(seriesPoints(html, `spectrum:${l}:${name}`).length, 48, l);
  }
  rs.forEach((r) => {
    for (const acc of Object.values(r.eval.after!.tasks)) {
      assert.ok(html.includes(`${(100 * acc).toFixed(1)}%`));
    }
  });
});

function mean(xs: number[]): number {
  return xs.reduce((a, x) => a + x, 0) / xs.length;
}

Deno.test("compare table: aligned columns with each run's figures", () => {
  const rs = ["hd-pissa", "pissa", "lora"].map((m) =>
    sampleReport(m, { steps: 12, seed: freshSeed(), layers: 2 })
  );
  const text = compareTable(rs);
  const lines = text.split("\n");
  const table = lines.slice(0, 2 + rs.length);
  assert.ok(table.every((l) => l.length === table[0].length), text);
  // Column boundaries: the gaps in the rule line are blank in every row.
  const rule = table[1];
  assert.match(rule, /^-+( {2}-+)+$/);
  for (let c = 0; c < rule.length; c++) {
    if (rule[c] === " ") { for (const l of table) assert.equal(l[c], " ", `column gap at ${c}`); }
  }
  const header = table[0].split(/ {2,}/).map((s) => s.trim());
  assert.deepEqual(header.slice(0, 2), ["method", "acc"]);
  for (const t of Object.keys(rs[0].eval.after!.tasks)) assert.ok(header.includes(`acc:${t}`));
  rs.forEach((r, i) => {
    const cells = table[2 + i].trim().split(/ {2,}/);
    assert.equal(cells.length, header.length);
    const col = (name: string) => cells[header.indexOf(name)];
    assert.equal(cells[0], r.method);
    assert.equal(col("acc"), `${(100 * r.eval.after!.overall).toFixed(1)}%`);
    const ranks = Object.values(r.effective_rank);
    assert.equal(col("rank@1e-2"), mean(ranks.map((e) => e["rank_1e-2"])).toFixed(1));
    assert.equal(col("energy90"), mean(ranks.map((e) => e.energy90)).toFixed(1));
    assert.equal(col("step ms"), mean(r.steps.map((s) => s.ms)).toFixed(0));
    assert.equal(col("recv/step"), formatBytes(mean(r.steps.map((s) => s.bytes_received))));
    assert.equal(col("opt mem/worker"), formatBytes(4 * r.memory!.optimizer_floats_per_worker!));
  });
  assert.equal(compareTable([]), "(no runs to compare)");
});

Deno.test("compare.json carries the same figures, machine-readable", async () => {
  const rs = ["hd-pissa", "lora", "lora"].map((m) =>
    sampleReport(m, { steps: 9, seed: freshSeed(), layers: 1 })
  );
  rs[1].steps[3].loss = NaN;
  const j = JSON.parse(JSON.stringify(compareJson(rs)));
  assert.deepEqual(Object.keys(j.methods), ["hd-pissa", "lora", "lora (2)"]);
  assert.deepEqual(j.tasks, ["arith", "code", "facts", "strings"]);
  rs.forEach((r, i) => {
    const f = j.methods[Object.keys(j.methods)[i]];
    assert.equal(f.method, r.method);
    assert.equal(f.steps, 9);
    assert.equal(f.accuracy.overall, r.eval.after!.overall);
    assert.deepEqual(f.accuracy.tasks, r.eval.after!.tasks);
    const ranks = Object.values(r.effective_rank);
    assert.ok(Math.abs(f["mean_rank_1e-2"] - mean(ranks.map((e) => e["rank_1e-2"]))) < 1e-12);
    assert.ok(Math.abs(f.step_ms_mean - mean(r.steps.map((s) => s.ms))) < 1e-9);
    const sorted = r.steps.map((s) => s.ms).sort((a, b) => a - b);
    assert.equal(f.step_ms_median, sorted[4]);
    assert.ok(Math.abs(f.bytes_sent_per_step - mean(r.steps.map((s) => s.bytes_sent))) < 1e-9);
    assert.equal(f.optimizer_bytes_per_worker, 4 * r.memory!.optimizer_floats_per_worker!);
    assert.equal(f.rank_bound, r.method === "hd-pissa" ? 32 : 4);
    assert.ok(Number.isFinite(f.final_loss), "a NaN loss does not poison the final loss");
    assert.ok(Math.abs(f.timing_per_step_ms.compute - r.timing.compute_ms / 9) < 1e-9);
  });
  const dir = await Deno.makeTempDir();
  try {
    await writeCompareJson(`${dir}/compare.json`, rs);
    assert.deepEqual(JSON.parse(await Deno.readTextFile(`${dir}/compare.json`)), j);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const noEval = sampleReport("full", { steps: 0, seed: 1 });
  noEval.eval = { before: null, after: null };
  const f = methodFigures(noEval);
  assert.equal(f.accuracy, null);
  assert.equal(f.step_ms_mean, null);
  assert.equal(f.timing_per_step_ms, null);
  assert.equal(f.rank_bound, null);
});

Deno.test("smoothed loss: debiased EMA that skips non-finite values", () => {
  const rng = new Rng(freshSeed());
  const xs = Array.from({ length: 40 }, () => 1 + 3 * rng.float());
  const s = smoothLoss(xs);
  assert.equal(s[0], xs[0]);
  for (let i = 0; i < xs.length; i++) {
    const prefix = xs.slice(0, i + 1);
    assert.ok(s[i] >= Math.min(...prefix) - 1e-12 && s[i] <= Math.max(...prefix) + 1e-12);
  }
  // Independent float64 reference of the same weights.
  const w = 1 - 10 / xs.length;
  let num = 0, den = 0;
  xs.forEach((x, i) => {
    num = num * w + (1 - w) * x;
    den = den * w + (1 - w);
    assert.ok(Math.abs(s[i] - num / den) < 1e-12);
  });
  const holes = [...xs];
  holes[5] = NaN;
  const t = smoothLoss([NaN, ...holes.slice(0, 10)]);
  assert.ok(Number.isNaN(t[0]));
  assert.ok(t.slice(1).every(Number.isFinite));
});

Deno.test("adapter_export: validated when present, drawn as its own section, escaped", () => {
  const r = sampleReport("hd-pissa", { seed: freshSeed(), layers: 1 });
  assert.ok(!renderReportHtml(r).includes(`id="adapter"`));
  const matrix = {
    rank: 32,
    shape: [64, 128],
    svd: "exact",
    energy_kept: 0.9991,
    rel_error: 0.03,
    rel_error_weight: 0.0012,
  };
  r.adapter_export = {
    folder: `adapters/<b>x</b>`,
    rank: 32,
    rank_source: "2Kr = 32",
    energy_kept: 0.9991,
    rel_error: 0.03,
    rel_error_weight: 0.0012,
    max_rel_error: 0.03,
    matrices: { [Q0]: matrix },
    not_in_adapter: [],
  };
  assert.deepEqual(validateReport(clone(r)), r);
  const html = renderReportHtml(r);
  assert.match(html, /<section id="adapter">/);
  assert.ok(html.includes("adapters/&lt;b&gt;x&lt;/b&gt;"));
  assert.ok(html.includes(`${escapeHtml(Q0)}</td><td>32</td><td>99.9%</td><td>0.03</td>`));
  expectReportError(
    mutated(r, ["adapter_export", "energy_kept"], 1.5),
    "adapter_export.energy_kept",
  );
  expectReportError(
    mutated(r, ["adapter_export", "matrices", Q0, "rel_error"], -1),
    `adapter_export.matrices["${Q0}"].rel_error`,
  );
});

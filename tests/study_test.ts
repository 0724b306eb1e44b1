// The rank study (examples/study.ts, train/study/): a scaled-down --quick study on the real job
// (real nats-server, workers and WebGPU) writes a study.json that passes its schema and a
// study.html with the plot; called again it trains nothing; another grid in the same folder is
// refused. The statistics against values worked out by hand, the plan's grid and budget.
import assert from "node:assert/strict";
import { runFinetune } from "../actors/job.ts";
import { CODES_SIZES, makeCodes } from "../train/datagen/codes.ts";
import { TaskGenerationError } from "../train/datagen/split.ts";
import { PROJECT_ROOT } from "../train/cli/options.ts";
import type { FinetuneOptions } from "../train/cli/options.ts";
import { comparisons, points, tuning } from "../train/study/analyze.ts";
import { DEFAULT_BUDGET, totalSeconds } from "../train/study/budget.ts";
import { splitLines } from "../train/study/data.ts";
import { StudyError } from "../train/study/errors.ts";
import { STUDY_FLAGS } from "../train/study/flags.ts";
import { mainRuns, type StudySettings, tuneRuns } from "../train/study/plan.ts";
import { planLines } from "../train/study/plan_text.ts";
import { runStudy, type StudyOptions } from "../train/study/run.ts";
import { type RunResult, runResultSchema, studyJsonSchema } from "../train/study/schema.ts";
import { bootstrapMean, pairedDifference, quantile, summarize } from "../train/study/stats.ts";

await Deno.mkdir("/tmp/xdg", { recursive: true }).catch(() => {});
Deno.env.set("XDG_RUNTIME_DIR", Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp/xdg");

const close = (a: number, b: number, tol = 1e-12) =>
  assert.ok(Math.abs(a - b) <= tol, `${a} is not ${b}`);

Deno.test("study stats: mean ± sd, quantiles and paired bootstrap intervals by hand", () => {
  const s = summarize([1, 2, 3, 4]);
  assert.equal(s.n, 4);
  close(s.mean, 2.5);
  close(s.sd!, Math.sqrt(5 / 3)); // squares of deviations 2.25+0.25+0.25+2.25 = 5, over n−1 = 3
  assert.equal(summarize([0.7]).sd, null);
  assert.throws(() => summarize([]), StudyError);
  assert.throws(() => summarize([1, NaN]), StudyError);
  close(quantile([1, 2, 3, 4, 5], 0.25), 2); // position 4·0.25 = 1
  close(quantile([10, 20], 0.75), 17.5); // position 0.75, between 10 and 20
  close(quantile([3], 0.9), 3);
  // Constant differences: every resample has the same mean.
  const c = bootstrapMean([0.02, 0.02, 0.02], { seed: 5, resamples: 500 });
  close(c.lo, 0.02);
  close(c.hi, 0.02);
  // Two values 0 and 1: a resample's mean is k/2, k ~ Binomial(2, 1/2), so the 95% interval is
  // [0, 1] and the 50% interval's ends are 0.5 (P(0) = P(1) = 1/4, P(0.5) = 1/2).
  const b = bootstrapMean([0, 1], { seed: 3, resamples: 4000 });
  assert.deepEqual([b.lo, b.hi], [0, 1]);
  const h = bootstrapMean([0, 1], { seed: 3, resamples: 4000, level: 0.5 });
  assert.deepEqual([h.lo, h.hi], [0.5, 0.5]);
  // Seeded: the same interval twice; another seed may differ but stays inside the values.
  const xs = [0.1, 0.3, -0.2, 0.05, 0.4];
  assert.deepEqual(bootstrapMean(xs, { seed: 9 }), bootstrapMean(xs, { seed: 9 }));
  const d = pairedDifference(
    new Map([[0, 0.5], [1, 0.6], [2, 0.7], [7, 0.9]]),
    new Map([[0, 0.4], [1, 0.4], [2, 0.4]]),
    { seed: 1, resamples: 2000 },
  );
  assert.deepEqual(d.seeds, [0, 1, 2]); // seed 7 has no partner
  d.diffs.forEach((v, i) => close(v, [0.1, 0.2, 0.3][i], 1e-15));
  close(d.mean, 0.2, 1e-15);
  assert.ok(d.lo >= 0.1 - 1e-15 && d.lo < 0.2 && d.hi > 0.2 && d.hi <= 0.3 + 1e-15);
  assert.throws(() => pairedDifference(new Map([[0, 1]]), new Map([[1, 1]])), StudyError);
});

const FULL: StudySettings = {
  quick: false,
  tasks: ["bench", "codes"],
  methods: ["lora", "pissa", "hd-pissa", "full"],
  parts: ["rank", "controls", "mute"],
  steps: 60,
  seeds: 3,
  workers: 4,
  batchSize: 16,
};

Deno.test("study plan: the grid of the issue, unique ids, a budget from the step time", () => {
  const tune = tuneRuns(FULL);
  assert.equal(tune.length, 2 * (4 + 4 + 4 + 3)); // tasks × (lora, pissa, hd-pissa, full rates)
  assert.ok(tune.every((r) => r.evalOn === "valid" && r.seed === 0));
  // HD-PiSSA's grid is the adapters' × K (mean moves each slice 1/K as far per step).
  const rates = (m: string) =>
    tune.filter((r) => r.task === "codes" && r.method === m).map((r) => r.lr);
  assert.deepEqual(rates("pissa"), [0.005, 0.01, 0.02, 0.04]);
  assert.deepEqual(rates("hd-pissa"), [0.02, 0.04, 0.08, 0.16]);
  assert.deepEqual(rates("full"), [0.0005, 0.002, 0.005]);
  assert.ok(tune.some((r) => r.id === "tune_codes_hd-pissa_r2_lr0.16_s0"));
  const main = mainRuns(FULL, new Map());
  const rank = main.filter((r) => r.phase === "rank");
  assert.equal(rank.length, 2 * 13 * 3); // (4 + 4 + 4 + 1) configurations
  assert.deepEqual(
    [...new Set(rank.filter((r) => r.method === "hd-pissa").map((r) => r.rank))],
    [1, 2, 4, 8],
  );
  assert.ok(main.every((r) => r.lr === null && r.evalOn === "test"));
  assert.equal(main.filter((r) => r.phase === "control").length, 15);
  const mute = main.filter((r) => r.phase === "mute");
  assert.deepEqual(
    mute.map((r) => `${r.mute}/${r.muteRescale}/s${r.seed}`),
    ["0.01", "1e-8", "1e-16", "1e-32"].flatMap((g) =>
      ["inverse", "fixed"].flatMap((m) => [0, 1, 2].map((seed) => `${g}/${m}/s${seed}`))
    ),
  );
  const ids = [...tune, ...main].map((r) => r.id);
  assert.equal(new Set(ids).size, ids.length);
  // A tuned rate fills the runs in; lr × K is the control's own.
  const tuned = mainRuns(FULL, new Map([["codes/hd-pissa", 0.01]]));
  const lrK = tuned.find((r) => r.series === "hd-pissa mean lr×K")!;
  assert.equal(lrK.lr, 0.01);
  assert.equal(lrK.lrFactor, 4);
  // Budget: 147 runs × 12 s + (108 + 9 + 24 + 6·4) step-equivalents × 60 steps × 0.7 s.
  const all = [...tune, ...main];
  assert.equal(all.length, 147);
  const budget = { stepSeconds: 0.7, overheadSeconds: 12, referenceBatch: 16 };
  close(totalSeconds(all, 60, budget), 147 * 12 + (108 + 9 + 24 + 24) * 60 * 0.7, 1e-6);
  const text = planLines(FULL, budget, new Set([ids[0]])).join("\n");
  assert.match(text, /total {5}147 runs {2}~2 h 24 min/); // 8694 s
  assert.match(text, /left {6}146 runs/);
  assert.match(text, new RegExp(`done ${ids[0]}`));
  // --quick's flags: the codes task, one seed.
  const q = STUDY_FLAGS.parse(["--quick"]).options;
  assert.deepEqual([q.tasks, q.seeds, q.out], [["codes"], 1, "runs/study-quick"]);
});

Deno.test("study analysis: tuning picks the best validation rate; paired comparisons by seed", () => {
  const s: StudySettings = { ...FULL, tasks: ["codes"], methods: ["pissa", "hd-pissa"], seeds: 2 };
  const results = new Map<string, RunResult>();
  const put = (id: string, acc: number) => {
    const spec = [
      ...tuneRuns(s),
      ...mainRuns(s, new Map([["codes/pissa", 1e-2], ["codes/hd-pissa", 4e-2]])),
    ]
      .find((r) => r.id === id)!;
    assert.ok(spec, id);
    results.set(
      id,
      runResultSchema.parse({
        spec,
        accuracy: acc,
        tasks: { codes: acc },
        final_loss: 1,
        total_rank: spec.method === "hd-pissa" ? 8 * spec.rank : 2 * spec.rank,
        optimizer_bytes_per_worker: 1000,
        steps: 60,
        step_ms_mean: 900,
        wall_ms: 60_000,
        finished_at: "2026-01-01T00:00:00Z",
      }),
    );
  };
  for (const [lr, acc] of [[0.005, 0.1], [0.01, 0.3], [0.02, 0.2], [0.04, 0.3]] as const) {
    put(`tune_codes_pissa_r8_lr${lr}_s0`, acc);
  }
  // Unfinished grid: no rate chosen yet.
  for (const [lr, acc] of [[0.02, 0.1], [0.04, 0.25], [0.08, 0.1]] as const) {
    put(`tune_codes_hd-pissa_r2_lr${lr}_s0`, acc);
  }
  assert.deepEqual([...tuning(s, results).best], [["codes/pissa", 0.01]]); // tie: smaller rate
  put("tune_codes_hd-pissa_r2_lr0.16_s0", 0);
  const { best } = tuning(s, results);
  assert.deepEqual([...best], [["codes/pissa", 0.01], ["codes/hd-pissa", 0.04]]);
  put("rank_codes_pissa_r4_lr0.01_s0", 0.40);
  put("rank_codes_pissa_r4_lr0.01_s1", 0.50);
  put("rank_codes_hd-pissa_r4_lr0.04_s0", 0.35);
  put("rank_codes_hd-pissa_r4_lr0.04_s1", 0.40);
  put("control_codes_hd-pissa_r4_lr0.04_s0_agg-sum", 0.45);
  put("control_codes_hd-pissa_r4_lr0.04_s1_agg-sum", 0.40);
  const ps = points(results.values());
  const pissa4 = ps.find((p) => p.series === "pissa" && p.rank === 4)!;
  close(pissa4.accuracy.mean, 0.45);
  close(pissa4.accuracy.sd!, Math.SQRT1_2 * 0.1, 1e-15);
  const cs = comparisons(s, ps);
  const eq = cs.find((c) => c.label === "equal rank per worker")!;
  assert.deepEqual(eq.difference.diffs.map((v) => Math.round(v * 100)), [-5, -10]);
  close(eq.difference.mean, -0.075, 1e-15);
  const sum = cs.find((c) => c.label === "control: hd-pissa sum")!;
  assert.deepEqual(sum.difference.diffs.map((v) => Math.round(v * 100)), [10, 0]);
});

Deno.test("codes task: every key asked once in test, stated `repeats` times in train, same code", () => {
  const { train, test } = makeCodes();
  assert.equal(test.length, CODES_SIZES.keys);
  assert.equal(train.length, CODES_SIZES.keys * CODES_SIZES.repeats);
  const code = new Map<string, string>();
  for (const e of test) {
    const m = /^Q: Code of ([a-z]{5})\nA: $/.exec(e.prompt);
    assert.ok(m, e.prompt);
    assert.match(e.response, /^[a-z]{3}$/);
    assert.ok(!code.has(m[1]), `key ${m[1]} asked twice`);
    code.set(m[1], e.response);
  }
  // A memorisation task: every training line is one of the test's facts, each `repeats` times.
  const count = new Map<string, number>();
  for (const e of train) {
    const m = /^Q: Code of ([a-z]{5})\nA: $/.exec(e.prompt);
    assert.ok(m, e.prompt);
    assert.equal(e.response, code.get(m[1]), e.prompt);
    count.set(m[1], (count.get(m[1]) ?? 0) + 1);
  }
  assert.deepEqual([...new Set(count.values())], [CODES_SIZES.repeats]);
  assert.equal(count.size, CODES_SIZES.keys);
  // Shuffled, not the test's order repeated.
  assert.notDeepEqual(
    train.slice(0, CODES_SIZES.keys).map((e) => e.prompt),
    test.map((e) => e.prompt),
  );
  // Why the repeats: the study's validation split (a tenth of the training lines) still asks
  // facts that the remaining training lines state.
  const { train: kept, valid } = splitLines(train.map((e) => JSON.stringify(e)));
  assert.ok(valid.length >= 10, `${valid.length} validation lines`);
  const keptSet = new Set(kept);
  assert.ok(valid.every((l) => keptSet.has(l)), "a validation fact is never trained");
  assert.deepEqual(makeCodes(), { train, test }); // seeded
  assert.throws(() => makeCodes(1, { keys: 0, repeats: 4 }), TaskGenerationError);
  assert.throws(() => makeCodes(1, { keys: 4, repeats: 1.5 }), TaskGenerationError);
  // More keys than five-letter names exist: the generator says so instead of looping.
  assert.throws(() => makeCodes(1, { keys: 14 ** 3 * 25 + 1, repeats: 1 }), TaskGenerationError);
});

Deno.test("study data: the validation split comes from the training lines, disjoint, seeded", () => {
  const lines = Array.from({ length: 50 }, (_, i) => `{"i":${i}}`);
  const a = splitLines(lines), b = splitLines(lines);
  assert.deepEqual(a, b);
  assert.equal(a.valid.length, 5);
  assert.equal(a.train.length + a.valid.length, 50);
  assert.equal(new Set([...a.train, ...a.valid]).size, 50);
});

Deno.test({
  name: "study --quick (scaled down): study.json, study.html, and a resume that trains nothing",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir({ prefix: "study-test-" });
    try {
      const o: StudyOptions = {
        quick: true,
        tasks: ["codes"],
        methods: ["pissa", "hd-pissa"],
        parts: ["rank"],
        steps: 2,
        seeds: 1,
        workers: 2,
        batchSize: 8,
        out,
        model: decodeURIComponent(new URL("models/base", PROJECT_ROOT).pathname),
        evalPerTask: 2,
        budget: DEFAULT_BUDGET,
      };
      const jobs: FinetuneOptions[] = [];
      const io = {
        log: (_: string) => {},
        finetune: async (options: FinetuneOptions) => {
          jobs.push(options);
          return (await runFinetune(options, { log: () => {} }))[0];
        },
      };
      const first = await runStudy(o, io);
      assert.equal(jobs.length, 2);
      assert.deepEqual(first.skipped, []);
      assert.deepEqual(jobs.map((j) => [j.method, j.rank, j.maxSteps, j.workers]), [
        ["pissa", 4, 2, 2],
        ["hd-pissa", 1, 2, 2],
      ]);
      // Training data is the study's split, never the test file; evaluation is the test file.
      assert.ok(jobs.every((j) => j.data === `${out}/data/codes/train.jsonl`));
      assert.ok(jobs.every((j) => j.eval!.endsWith("data/codes/test.jsonl")));
      const study = studyJsonSchema.parse(JSON.parse(await Deno.readTextFile(`${out}/study.json`)));
      assert.equal(study.runs.finished, 2);
      assert.equal(study.points.length, 2);
      const hd = study.points.find((p) => p.method === "hd-pissa")!;
      assert.equal(hd.total_rank, 2 * 2 * 1); // 2Kr with K = 2, r = 1
      assert.ok(hd.optimizer_bytes_per_worker! > 0);
      const html = await Deno.readTextFile(`${out}/study.html`);
      assert.match(html, /<svg[^>]*aria-label="accuracy against total update rank"/);
      assert.match(html, /<polyline class="curve" data-method="hd-pissa"/);
      assert.match(html, /<polyline class="curve" data-method="pissa"/);
      assert.doesNotMatch(html, /<script|https?:\/\/(?!www\.w3\.org)/);
      const results = [...Deno.readDirSync(`${out}/results`)].map((e) => e.name).sort();
      assert.equal(results.length, 2);
      assert.ok(results.every((n) => n.endsWith(".json")));

      // Again: everything is found finished, nothing is trained, study.json is the same.
      const before = await Deno.readTextFile(`${out}/study.json`);
      const again = await runStudy(o, io);
      assert.equal(jobs.length, 2);
      assert.deepEqual(again.trained, []);
      assert.equal(again.skipped.length, 2);
      assert.equal(await Deno.readTextFile(`${out}/study.json`), before);

      // Another grid in the same folder is refused before anything runs.
      await assert.rejects(
        () => runStudy({ ...o, steps: 3 }, io),
        (e) => e instanceof StudyError && /steps = 2/.test(e.message),
      );
      assert.equal(jobs.length, 2);
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  },
});

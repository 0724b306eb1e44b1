// The sampling step (model/sampling.ts) against float64 reference distributions: top-k keeps
// exactly k, top-p exactly the nucleus, temperature scales, the repetition penalty matches a hand
// computed example, draws follow the distribution (chi-square), and a seed repeats its tokens.
import assert from "node:assert/strict";
import {
  applyRepetitionPenalty,
  checkSampling,
  GREEDY,
  makeSampler,
  sampleToken,
  samplingDistribution,
  samplingFromGenerationConfig,
  type SamplingParams,
} from "../model/sampling.ts";
import { Rng } from "../core/rng.ts";

const LOGITS = [2.0, -1.0, 0.5, 3.0, 1.0, -2.5, 0.0, 1.5];
const P = (o: Partial<SamplingParams>): SamplingParams => ({ ...GREEDY, doSample: true, ...o });

function softmax64(x: number[]): number[] {
  const m = x.reduce((a, b) => Math.max(a, b), -Infinity);
  const e = x.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/** Draws n tokens; the counts per id. */
function draw(params: SamplingParams, n: number, seed = 7, present: number[] = []): number[] {
  const rng = new Rng(seed);
  const counts = new Array(LOGITS.length).fill(0);
  const f32 = Float32Array.from(LOGITS);
  for (let i = 0; i < n; i++) counts[sampleToken(f32, params, present, rng)]++;
  return counts;
}

/** Pearson's chi-square of the counts against p over the support of p. */
function chiSquare(counts: number[], p: ArrayLike<number>, n: number): { x2: number; df: number } {
  let x2 = 0;
  let df = -1;
  for (let i = 0; i < counts.length; i++) {
    if (p[i] === 0) continue;
    const e = n * p[i];
    x2 += (counts[i] - e) ** 2 / e;
    df++;
  }
  return { x2, df };
}

// 99.9 % quantiles of chi-square for df = 1..7.
const CHI2_999 = [10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32];

Deno.test("repetition penalty: HF's rule on a hand computed example", () => {
  const got = applyRepetitionPenalty([2, -1, 0.5, 3], [0, 1, 1], 2);
  assert.deepEqual([...got], [1, -2, 0.5, 3]);
  // Under greedy decoding too: token 3 (3.0 -> 1.5) loses to token 0 (2.0).
  assert.equal(sampleToken(LOGITS, { ...GREEDY, repetitionPenalty: 2 }, [3], new Rng(0)), 0);
  assert.equal(sampleToken(LOGITS, GREEDY, [3], new Rng(0)), 3);
});

Deno.test("temperature scales the logits", () => {
  for (const t of [0.5, 1, 2]) {
    const p = samplingDistribution(LOGITS, P({ temperature: t }));
    const ref = softmax64(LOGITS.map((x) => x / t));
    p.forEach((v, i) => assert.ok(Math.abs(v - ref[i]) < 1e-12));
  }
});

Deno.test("top-k keeps exactly the k largest", () => {
  for (let k = 1; k <= LOGITS.length; k++) {
    const p = samplingDistribution(LOGITS, P({ topK: k }));
    const kept = [...p].filter((v) => v > 0).length;
    assert.equal(kept, k);
    const top = LOGITS.map((x, i) => [x, i]).sort((a, b) => b[0] - a[0]).slice(0, k);
    const ref = softmax64(top.map(([x]) => x));
    top.forEach(([, i], j) => assert.ok(Math.abs(p[i] - ref[j]) < 1e-12));
  }
});

Deno.test("top-p keeps exactly the nucleus", () => {
  const base = softmax64(LOGITS);
  const order = base.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0]);
  for (const topP of [0.05, 0.3, 0.5, 0.7, 0.9, 0.99]) {
    // The nucleus: the fewest most likely tokens whose mass reaches top_p.
    const nucleus = new Set<number>();
    let mass = 0;
    for (const [v, i] of order) {
      nucleus.add(i);
      mass += v;
      if (mass >= topP) break;
    }
    const p = samplingDistribution(LOGITS, P({ topP }));
    p.forEach((v, i) => assert.equal(v > 0, nucleus.has(i), `top_p ${topP}, token ${i}`));
    p.forEach((v, i) => {
      if (v > 0) assert.ok(Math.abs(v - base[i] / mass) < 1e-12);
    });
  }
});

Deno.test("draws follow the distribution and never leave its support", () => {
  const n = 20000;
  const cases: SamplingParams[] = [
    P({}),
    P({ temperature: 0.7 }),
    P({ topK: 3 }),
    P({ topP: 0.8 }),
    P({ temperature: 1.3, topK: 5, topP: 0.9, repetitionPenalty: 1.5 }),
  ];
  for (const params of cases) {
    const present = params.repetitionPenalty !== 1 ? [3, 5] : [];
    const p = samplingDistribution(LOGITS, params, present);
    const counts = draw(params, n, 11, present);
    counts.forEach((c, i) => {
      if (p[i] === 0) assert.equal(c, 0, `token ${i} outside the kept set was drawn`);
    });
    const { x2, df } = chiSquare(counts, p, n);
    if (df > 0) {
      assert.ok(x2 < CHI2_999[df - 1], `${JSON.stringify(params)}: chi2 ${x2} df ${df}`);
    }
  }
});

Deno.test("the same seed gives the same tokens; sequences have their own streams", () => {
  const logits = Float32Array.from(LOGITS);
  const run = (seed: number, seq: number) => {
    const s = makeSampler(P({ temperature: 1.5 }), seed);
    return Array.from({ length: 50 }, () => s(logits, seq, []));
  };
  assert.deepEqual(run(3, 0), run(3, 0));
  assert.notDeepEqual(run(3, 0), run(4, 0));
  assert.deepEqual(run(3, 1), run(4, 0));
});

Deno.test("parameters: checks and generation_config.json", () => {
  assert.throws(() => checkSampling(P({ temperature: 0 })), /temperature/);
  assert.throws(() => checkSampling(P({ topP: 0 })), /top_p/);
  assert.throws(() => checkSampling(P({ topK: 1.5 })), /top_k/);
  const g = samplingFromGenerationConfig({ do_sample: true, temperature: 0.6, top_p: 0.9 });
  assert.deepEqual(g, {
    doSample: true,
    temperature: 0.6,
    topK: 50,
    topP: 0.9,
    repetitionPenalty: 1,
    maxNewTokens: null,
  });
  assert.equal(samplingFromGenerationConfig(null).doSample, false);
});

// At a real vocabulary (Qwen's 151,936): top-k keeps exactly the k largest logits and top-p
// exactly the nucleus of an independent float64 computation (descending order, the shortest
// prefix whose probability reaches top_p), and draws never leave the kept set.
Deno.test("top-k and top-p at a vocabulary of 151,936 against float64", () => {
  const V = 151_936;
  const rng = new Rng(11);
  const logits = Float32Array.from({ length: V }, () => 3 * rng.normal());
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b] - logits[a]);

  const k = 50;
  const pk = samplingDistribution(logits, P({ topK: k }));
  const keptK = new Set(order.slice(0, k));
  for (let i = 0; i < V; i++) assert.equal(pk[i] > 0, keptK.has(i), `top-k: token ${i}`);

  const topP = 0.9;
  const full = softmax64(Array.from(logits));
  let sum = 0;
  let n = 0;
  while (sum < topP) sum += full[order[n++]];
  const keptP = new Set(order.slice(0, n));
  const pp = samplingDistribution(logits, P({ topP }));
  let total = 0;
  for (let i = 0; i < V; i++) {
    assert.equal(pp[i] > 0, keptP.has(i), `top-p: token ${i}`);
    total += pp[i];
  }
  assert.ok(Math.abs(total - 1) < 1e-12, `probabilities sum to ${total}`);
  // Renormalised over the nucleus: p_i / Σ_nucleus p.
  for (const i of order.slice(0, 5)) assert.ok(Math.abs(pp[i] - full[i] / sum) < 1e-12);
  const draws = new Rng(3);
  for (let d = 0; d < 100; d++) {
    assert.ok(keptP.has(sampleToken(logits, P({ topP }), [], draws)));
  }
});

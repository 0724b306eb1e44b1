import assert from "node:assert/strict";
import {
  BatchConfigError,
  BatchPlan,
  DataError,
  epochOrder,
  epochSeed,
  shardBatch,
  stepPlan,
} from "../train/data/mod.ts";
import { Rng } from "../core/rng.ts";

const base = { batchSize: 8, workers: 2, microBatch: 2, epochs: 2, seed: 5 };

Deno.test("worked example, no shuffle: N = 10, batch 8, K = 2, M = 2, 2 epochs", () => {
  const plan = new BatchPlan({ ...base, numExamples: 10, shuffle: false });
  // floor(10 / 8) = 1 batch per epoch; examples 8 and 9 are the dropped partial batch.
  assert.equal(plan.stepsPerEpoch, 1);
  assert.equal(plan.totalSteps, 2);
  for (const t of [0, 1]) {
    const s = plan.step(t);
    assert.equal(s.epoch, t);
    assert.equal(s.batchInEpoch, 0);
    assert.deepEqual(s.examples, [0, 1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(s.workers, [
      { examples: [0, 2, 4, 6], microBatches: [[0, 2], [4, 6]] },
      { examples: [1, 3, 5, 7], microBatches: [[1, 3], [5, 7]] },
    ]);
  }
  assert.throws(() => plan.step(2), DataError);
});

Deno.test("worked example, no shuffle: N = 17 gives two batches per epoch", () => {
  const plan = new BatchPlan({ ...base, numExamples: 17, shuffle: false });
  assert.equal(plan.totalSteps, 4);
  const s1 = plan.step(1);
  assert.deepEqual([s1.epoch, s1.batchInEpoch], [0, 1]);
  assert.deepEqual(s1.workers.map((w) => w.microBatches), [
    [[8, 10], [12, 14]],
    [[9, 11], [13, 15]],
  ]);
  const s2 = plan.step(2);
  assert.deepEqual([s2.epoch, s2.batchInEpoch], [1, 0]);
  assert.deepEqual(s2.examples, [0, 1, 2, 3, 4, 5, 6, 7]);
});

/** Fisher-Yates written out here, drawing from the epoch's generator. */
function referenceShuffle(n: number, seed: number): number[] {
  const rng = new Rng(seed);
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

Deno.test("worked example, shuffled: N = 10, batch 8, K = 2, M = 2, 2 epochs", () => {
  const plan = new BatchPlan({ ...base, numExamples: 10, shuffle: true });
  const orders: number[][] = [];
  for (const t of [0, 1]) {
    const o = referenceShuffle(10, epochSeed(5, t));
    orders.push(o);
    const s = plan.step(t);
    assert.equal(s.epoch, t);
    // The batch is the first 8 of the epoch's order; its last 2 are dropped.
    assert.deepEqual(s.examples, o.slice(0, 8));
    assert.deepEqual(s.workers, [
      { examples: [o[0], o[2], o[4], o[6]], microBatches: [[o[0], o[2]], [o[4], o[6]]] },
      { examples: [o[1], o[3], o[5], o[7]], microBatches: [[o[1], o[3]], [o[5], o[7]]] },
    ]);
    assert.deepEqual([...o].sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  }
  assert.deepEqual(stepPlan({ ...base, numExamples: 10, shuffle: true }, 1), plan.step(1));
  assert.notDeepEqual(orders[0], orders[1]);
  assert.notDeepEqual(orders[0], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  // Same seed, same orders; another seed, other orders.
  assert.deepEqual(
    new BatchPlan({ ...base, numExamples: 10, shuffle: true }).step(1),
    plan.step(1),
  );
  const other = new BatchPlan({ ...base, numExamples: 10, shuffle: true, seed: 6 });
  assert.notDeepEqual(other.step(0).examples, plan.step(0).examples);
});

Deno.test("epoch seeds differ across seeds and epochs; orders are permutations", () => {
  const seen = new Set<number>();
  for (const seed of [0, 1, 2, 42, 2 ** 32, 2 ** 32 + 1, -1]) {
    for (let e = 0; e < 100; e++) seen.add(epochSeed(seed, e));
  }
  assert.equal(seen.size, 700);
  const o = epochOrder(1000, true, 3, 7);
  assert.deepEqual([...o].sort((a, b) => a - b), Array.from({ length: 1000 }, (_, i) => i));
  assert.deepEqual(epochOrder(5, false, 3, 7), [0, 1, 2, 3, 4]);
});

Deno.test("shards are strided, disjoint, cover the batch, in micro-batches of M", () => {
  const rng = new Rng(9);
  for (let trial = 0; trial < 50; trial++) {
    const k = 1 + rng.int(4), m = 1 + rng.int(3);
    const b = k * m * (1 + rng.int(3));
    const batch = Array.from({ length: b }, () => rng.int(1000));
    const shares = shardBatch(batch, k, m);
    assert.equal(shares.length, k);
    for (let w = 0; w < k; w++) {
      assert.deepEqual(shares[w].examples, batch.filter((_, i) => i % k === w));
      assert.deepEqual(shares[w].microBatches.flat(), shares[w].examples);
      for (const mb of shares[w].microBatches) assert.equal(mb.length, m);
    }
  }
});

Deno.test("max_steps runs past the epochs; T = epochs · floor(N / B) otherwise", () => {
  const cfg = { numExamples: 10, batchSize: 4, workers: 1, microBatch: 2, shuffle: true, seed: 1 };
  assert.equal(new BatchPlan({ ...cfg, epochs: 3 }).totalSteps, 6);
  assert.equal(new BatchPlan(cfg).totalSteps, 2);
  const plan = new BatchPlan({ ...cfg, epochs: 1, maxSteps: 7 });
  assert.equal(plan.totalSteps, 7);
  for (let t = 0; t < 7; t++) {
    const s = plan.step(t);
    assert.equal(s.epoch, Math.floor(t / 2));
    const o = referenceShuffle(10, epochSeed(1, s.epoch));
    assert.deepEqual(s.examples, o.slice(4 * (t % 2), 4 * (t % 2) + 4));
  }
});

Deno.test("cursor: resuming at any step gives the same batches", () => {
  const cfg = {
    numExamples: 23,
    batchSize: 6,
    workers: 3,
    microBatch: 1,
    epochs: 4,
    shuffle: true,
    seed: 77,
  };
  const a = new BatchPlan(cfg);
  const straight = Array.from({ length: a.totalSteps }, (_, t) => a.step(t));
  for (let at = 0; at <= a.totalSteps; at++) {
    const saved = JSON.parse(JSON.stringify(a.cursor(at)));
    const b = new BatchPlan(cfg);
    const from = b.resume(saved);
    assert.equal(from, at);
    for (let t = from; t < b.totalSteps; t++) assert.deepEqual(b.step(t), straight[t]);
  }
  const saved = a.cursor(3);
  assert.throws(
    () => new BatchPlan({ ...cfg, seed: 78 }).resume(saved),
    (e: unknown) => e instanceof DataError && /seed/.test(e.message),
  );
  assert.throws(() => new BatchPlan({ ...cfg, numExamples: 24 }).resume(saved), DataError);
  assert.throws(() => a.resume({ ...saved, version: 2 }), DataError);
  assert.throws(() => a.resume({ ...saved, step: 1000 }), DataError);
});

Deno.test("bad batch settings are typed errors with the numbers in them", () => {
  const cfg = {
    numExamples: 100,
    batchSize: 8,
    workers: 3,
    microBatch: 2,
    shuffle: false,
    seed: 0,
  };
  assert.throws(
    () => new BatchPlan(cfg),
    (e: unknown) => e instanceof BatchConfigError && /batch_size 8 .* 3 × 2 = 6/.test(e.message),
  );
  assert.throws(() => new BatchPlan({ ...cfg, workers: 2, microBatch: 3 }), BatchConfigError);
  assert.throws(
    () => new BatchPlan({ ...cfg, workers: 2, numExamples: 7 }),
    (e: unknown) =>
      e instanceof BatchConfigError && /larger than the data set \(7 examples\)/.test(e.message),
  );
  assert.throws(() => new BatchPlan({ ...cfg, workers: 2, epochs: 0 }), BatchConfigError);
  assert.throws(() => new BatchPlan({ ...cfg, workers: 0 }), BatchConfigError);
  assert.throws(() => new BatchPlan({ ...cfg, workers: 2, maxSteps: 1.5 }), BatchConfigError);
  assert.throws(() => shardBatch([1, 2, 3], 2, 1), BatchConfigError);
});

/**
 * The registry of training methods, and what every registered method must keep consistent on a
 * tiny model: its checks, its layout, its init (and that init's trip through named tensors), how
 * it combines contributions and the traffic it reports, and its worker's side of the same layout.
 * A new method is checked here by being registered.
 */
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import {
  adaptableLinears,
  expectedTensors,
  LINEAR_KINDS,
  type LlamaConfig,
} from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import { Rng } from "../core/rng.ts";
import { factorKey, isFactorKey } from "../train/methods/factors.ts";
import { MethodSettingsError, type TrainingMethod } from "../train/methods/method.ts";
import { METHODS as NAMES } from "../train/methods/names.ts";
import {
  findMethod,
  getMethod,
  METHODS,
  TRAINING_METHODS,
  UnknownMethodError,
} from "../train/methods/registry.ts";
import type { WorkerMethodConfig } from "../train/methods/worker.ts";
import { METHODS as FLAG_METHODS } from "../train/cli/options.ts";
import { randomMicroBatch, randomWeights, smallConfig } from "./support/model_gpu.ts";

const CONFIG: LlamaConfig = smallConfig({
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 1,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 31,
});
const K = 2;
const RANK = 2;
const SEQ = 8;
const TARGETS = [...LINEAR_KINDS];
const SETTINGS = { workers: K, rank: RANK, alpha: RANK, targets: TARGETS };
/** The smallest adapted matrix: k_proj/v_proj are [8, 16]. */
const MIN_RANK = Math.min(...adaptableLinears(CONFIG).map((l) => Math.min(l.out, l.in)));

function workerConfig(m: TrainingMethod): WorkerMethodConfig {
  return {
    method: m.name,
    ...SETTINGS,
    mute: "exact",
    aggregate: "mean",
    optimizer: "adamw",
    weightDecay: 0,
    clip: 0,
  };
}

function initOf(m: TrainingMethod, seed = 3) {
  const weights = randomWeights(CONFIG, new Rng(seed));
  const init = m.init(CONFIG, weights, { ...SETTINGS, svd: "exact", svdNiter: 0, seed });
  return { weights, init };
}

Deno.test("registry: names in order, unique, the same list everywhere", () => {
  assert.deepEqual(TRAINING_METHODS.map((m) => m.name), [...METHODS]);
  assert.equal(new Set(METHODS).size, METHODS.length);
  assert.deepEqual([...NAMES], [...METHODS]);
  assert.deepEqual([...FLAG_METHODS], [...METHODS]);
  // The four of docs/architecture.md §2, HD-PiSSA first (the default, and the first run of --compare).
  for (const name of ["hd-pissa", "pissa", "lora", "full"]) assert.ok(findMethod(name), name);
  assert.equal(METHODS[0], "hd-pissa");
  for (const m of TRAINING_METHODS) assert.equal(getMethod(m.name), m);
});

Deno.test("registry: an unknown name is a typed error naming the known ones", () => {
  assert.equal(findMethod("dora"), undefined);
  assert.throws(
    () => getMethod("dora"),
    (e: unknown) =>
      e instanceof UnknownMethodError && e.method === "dora" &&
      e.known.join() === METHODS.join() && e.message.includes(METHODS.join(", ")),
  );
  assert.throws(() => getMethod("HD-PiSSA"), UnknownMethodError);
  assert.throws(() => getMethod(""), UnknownMethodError);
});

Deno.test("factor names: written and recognised in one place", () => {
  const w = "model.layers.0.mlp.up_proj.weight";
  assert.equal(factorKey(w, "A", 3), `${w}.A3`);
  assert.ok(isFactorKey(factorKey(w, "B", 0)));
  assert.ok(!isFactorKey(w));
  assert.ok(!isFactorKey(`${w}.residual`));
  for (const t of expectedTensors(CONFIG)) assert.ok(!isFactorKey(t.name), t.name);
});

for (const m of TRAINING_METHODS) {
  Deno.test(`${m.name}: checks, layout, init, init as tensors, combine and traffic agree`, () => {
    assert.ok(m.summary.length > 0);
    const { weights, init } = initOf(m);
    const adapters = init.factors.size > 0;

    // Checks: the settings used here pass; an adapter method refuses a rank no matrix holds.
    m.validate(CONFIG, SETTINGS);
    if (adapters) {
      assert.throws(
        () => m.validate(CONFIG, { ...SETTINGS, workers: 1, rank: MIN_RANK + 1 }),
        (e: unknown) =>
          e instanceof MethodSettingsError && e.flag === "rank" && e.method === m.name &&
          e.message.includes(`at most ${MIN_RANK}`),
      );
    }

    // Layout: contiguous segments of model tensors, the shapes adding up.
    const layout = m.layout(CONFIG, SETTINGS);
    const shapes = new Map(expectedTensors(CONFIG).map((t) => [t.name, t.shape]));
    let offset = 0;
    for (const seg of layout.segments) {
      assert.ok(shapes.has(seg.name), `${seg.name} is not a model tensor`);
      assert.equal(seg.offset, offset);
      assert.equal(seg.length, seg.shape.reduce((a, b) => a * b, 1));
      offset += seg.length;
    }
    assert.equal(layout.length, offset);
    assert.ok(layout.length > 0);

    // Init: factors of the layout's shapes for every adapted weight, or none at all.
    const linears = adaptableLinears(CONFIG, TARGETS);
    if (adapters) {
      assert.deepEqual([...init.factors.keys()], linears.map((l) => l.name));
      for (const l of linears) {
        const pairs = init.factors.get(l.name)!;
        assert.ok(pairs.length === 1 || pairs.length === K, `${l.name}: ${pairs.length} pairs`);
        const [a, b] = layout.segments.filter((s) => s.name === l.name);
        assert.deepEqual([a.shape, b.shape], [[RANK, l.in], [l.out, RANK]]);
        for (const p of pairs) {
          assert.equal(p.A.length, a.length);
          assert.equal(p.B.length, b.length);
          assert.ok(p.A.every(Number.isFinite) && p.B.every(Number.isFinite));
        }
        const res = init.residuals.get(l.name);
        if (res) assert.equal(res.length, weights.get(l.name)!.data.length);
      }
      assert.match(m.initLog(CONFIG, SETTINGS) ?? "", new RegExp(`${linears.length} matrices`));
    } else {
      assert.equal(init.residuals.size, 0);
    }
    // Seeded: the same init again, bit for bit (seeded runs must be bit-identical).
    assert.deepEqual(initOf(m).init, init);

    // The trip through the object store gives the init back, bit for bit.
    const tensors = m.initToTensors(CONFIG, SETTINGS, init);
    for (const k of tensors.keys()) {
      assert.ok(isFactorKey(k) || k.endsWith(".residual"), `unexpected tensor ${k}`);
    }
    assert.deepEqual(m.initFromTensors(tensors, SETTINGS), init);

    // Combine: K contributions of the layout's length give an update of updateLength floats,
    // and the traffic reported is those sizes in bytes.
    const rng = new Rng(9);
    const parts = Array.from({ length: K }, () => {
      const c = new Float32Array(layout.length);
      for (let i = 0; i < c.length; i++) c[i] = rng.uniform(-1, 1);
      return c;
    });
    const update = m.combine(parts);
    assert.equal(update.length, m.updateLength(layout, K));
    assert.ok(update.every(Number.isFinite));
    assert.deepEqual(m.combine(parts), update);
    const traffic = m.traffic(layout, K);
    assert.equal(traffic.sent, 4 * layout.length);
    assert.equal(traffic.received, 4 * update.length);
    assert.ok(traffic.expression.length > 0);

    // The rank bound: known from K and r for the adapter methods, positive; from the shape
    // otherwise.
    const bound = m.rankBound({ rank: RANK, workers: K }) ??
      m.rankBound({ rank: RANK, workers: K }, [8, 16]);
    assert.ok(bound !== null && Number.isInteger(bound) && bound > 0, `bound ${bound}`);
    assert.ok(m.rankBoundLabel.length > 0);
  });
}

Deno.test("every method's worker has the driver's layout and takes a step with its update", async () => {
  const gpu = await Gpu.open();
  try {
    for (const m of TRAINING_METHODS) {
      const cfg = workerConfig(m);
      const { weights, init } = initOf(m);
      const wire = m.initFromTensors(m.initToTensors(CONFIG, cfg, init), cfg);
      const layout = m.layout(CONFIG, cfg);
      const models: LlamaGpu[] = [];
      try {
        const workers = [];
        for (let k = 0; k < K; k++) {
          const model = await LlamaGpu.create(gpu, CONFIG, weights, {
            maxRows: 2,
            seqLen: SEQ,
            ...m.modelOptions(cfg),
          });
          models.push(model);
          workers.push(m.createWorker(model, cfg, k, wire));
        }
        for (const w of workers) {
          assert.deepEqual(w.layout, layout, `${m.name}: the worker's layout differs`);
          assert.equal(w.optimizerFloats, 2 * layout.length, `${m.name}: optimizer floats`);
        }
        const rng = new Rng(4);
        const steps = [];
        for (const w of workers) {
          steps.push(await w.step([randomMicroBatch(CONFIG, rng, 2, SEQ)], 0.01));
        }
        for (const s of steps) assert.equal(s.contribution.length, layout.length);
        const update = m.combine(steps.map((s) => s.contribution));
        for (const w of workers) await w.apply(update, 0.01);
        const after = await Promise.all(models.map((x) => x.readWeights()));
        for (const [name, t] of after[0]) {
          assert.deepEqual(after[1].get(name)!.data, t.data, `${m.name}: ${name} differs`);
        }
        const adapters = await workers[0].adapters();
        for (const k of adapters.keys()) assert.ok(isFactorKey(k), `${m.name}: ${k}`);
        // A checkpoint keeps W and these adapters: they alone must set a worker up again.
        const restored = m.createWorker(models[0], cfg, 0, m.initFromTensors(adapters, cfg));
        assert.deepEqual(restored.layout, layout);
      } finally {
        for (const x of models) x.close();
      }
    }
  } finally {
    gpu.close();
  }
});

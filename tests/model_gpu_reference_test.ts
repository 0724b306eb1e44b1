// The whole GPU model against the independent float64 reference on fresh random tiny configs
// (GQA untied with head_dim 6; GQA tied; every LLaMA bias with dynamic RoPE and a sliding
// window): loss, logits, every adapter gradient under the exact
// mute, the numeric mute (γ = 1e-16 and 0.25) and σ = s, every full-weight gradient, over a step
// of several micro-batches of different sizes (one without any target, to check the loss
// weighting of docs/architecture.md §4); and two runs giving the same bits.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { LINEAR_KINDS, type LinearKind, type LlamaConfig } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import type { ReferenceAdapter } from "../model/reference/llama.ts";
import type { HostTensor } from "../model/safetensors.ts";
import type { MicroBatch } from "../model/batch.ts";
import { sameBits } from "../gpu/check.ts";
import {
  BIASED_WINDOWED,
  gpuStep,
  GQA_TIED,
  GQA_UNTIED,
  randomAdapterFactors,
  randomMicroBatch,
  randomWeights,
  referenceAdapters,
  referenceStep,
  relErr,
  Rng,
  WorstError,
} from "./support/model_gpu.ts";

const TOL = 1e-5;
const S = 9;

interface Case {
  config: LlamaConfig;
  weights: Map<string, HostTensor>;
  batches: MicroBatch[];
  factors: Map<string, { A: Float32Array; B: Float32Array }>;
}

function makeCase(config: LlamaConfig, seed: number, rank: number): Case {
  const rng = new Rng(seed);
  const weights = randomWeights(config, rng);
  // Three micro-batches of 3, 2 and 1 rows; the middle one has no target at all.
  const batches = [
    randomMicroBatch(config, rng, 3, S),
    randomMicroBatch(config, rng, 2, S, false),
    randomMicroBatch(config, rng, 1, S),
  ];
  assert.ok(batches[0].targets > 0 && batches[1].targets === 0 && batches[2].targets > 0);
  return { config, weights, batches, factors: randomAdapterFactors(config, rank, rng) };
}

Deno.test("gpu model matches the float64 reference", async (t) => {
  const gpu = await Gpu.open();
  try {
    for (
      const [label, config, seed] of [
        ["GQA untied", GQA_UNTIED, 11],
        ["GQA tied", GQA_TIED, 12],
        ["biases, dynamic RoPE, window 4", BIASED_WINDOWED, 13],
      ] as const
    ) {
      const rank = 3;
      const c = makeCase(config, seed, rank);

      await t.step(
        `${label}: adapter gradients (exact mute, γ = 1e-16, γ = 0.25, σ = s)`,
        async () => {
          const model = await LlamaGpu.create(gpu, config, c.weights, {
            maxRows: 3,
            seqLen: S,
            maxMicroBatches: 3,
            adapters: { targets: LINEAR_KINDS, rank },
            gradients: "adapters",
          });
          try {
            assert.deepEqual(model.trainableNames(), []);
            for (const n of model.adapterNames()) {
              model.writeAdapter(n, c.factors.get(n)!.A, c.factors.get(n)!.B);
            }
            const s = 1.5;
            const gamma = 1e-16;
            // γ = 0.25 makes the numeric mute's forward term and its dX path visible.
            for (
              const [mute, g] of [["exact", 0], ["γ = 1e-16", gamma], ["γ = 0.25", 0.25], [
                "σ = s",
                1,
              ]] as const
            ) {
              const sigma = g * s;
              model.setAdapterScales(sigma, s, mute.startsWith("γ") ? { gamma: g } : {});
              const weights = model.setStepBatches(c.batches);
              const n0 = c.batches[0].targets;
              const n2 = c.batches[2].targets;
              assert.deepEqual(weights, [Math.fround(1 / (2 * n0)), 0, Math.fround(1 / (2 * n2))]);
              const got = await gpuStep(model, c.batches);
              const ref = referenceStep(
                config,
                c.weights,
                c.batches,
                referenceAdapters(c.factors, rank, s, sigma, model.adapterNames()),
              );
              const lossErr = Math.abs(got.loss - ref.loss) / ref.loss;
              const worst = new WorstError();
              for (const n of model.adapterNames()) {
                worst.add(`g_A ${n}`, relErr(got.gradA.get(n)!, ref.gradA.get(n)!));
                worst.add(`g_B ${n}`, relErr(got.gradB.get(n)!, ref.gradB.get(n)!));
              }
              console.log(`${label} ${mute}: loss rel ${lossErr.toExponential(2)}, worst ${worst}`);
              assert.ok(lossErr < TOL, `loss ${got.loss} vs ${ref.loss}`);
              assert.ok(worst.value < TOL, `adapter gradients: ${worst}`);
            }
            // The adapter is in the logits only when σ ≠ 0.
            for (const sigma of [0, 1.5]) {
              model.setAdapterScales(sigma, 1.5);
              const logits = await model.logits(c.batches[0]);
              const ref = referenceStep(
                config,
                c.weights,
                [c.batches[0]],
                referenceAdapters(c.factors, rank, 1.5, sigma, model.adapterNames()),
              );
              const e = relErr(logits, ref.logits[0]);
              console.log(`${label} logits σ=${sigma}: rel ${e.toExponential(2)}`);
              assert.ok(e < TOL, `logits rel ${e}`);
            }
          } finally {
            model.close();
          }
        },
      );

      await t.step(
        `${label}: every full-weight gradient, embeddings and norms included`,
        async () => {
          // Untied: with σ = s adapters in the forward (dX flows through them too); tied: plain.
          const withAdapters = !config.tie_word_embeddings;
          const model = await LlamaGpu.create(gpu, config, c.weights, {
            maxRows: 3,
            seqLen: S,
            maxMicroBatches: 3,
            adapters: withAdapters ? { targets: LINEAR_KINDS, rank } : undefined,
            gradients: "weights",
          });
          try {
            const s = 0.75;
            let adapters = new Map<string, ReferenceAdapter>();
            if (withAdapters) {
              for (const n of model.adapterNames()) {
                model.writeAdapter(n, c.factors.get(n)!.A, c.factors.get(n)!.B);
              }
              model.setAdapterScales(s, s);
              adapters = referenceAdapters(c.factors, rank, s, s, model.adapterNames());
            }
            const got = await gpuStep(model, c.batches);
            const ref = referenceStep(config, c.weights, c.batches, adapters);
            assert.deepEqual(model.trainableNames().sort(), [...ref.gradW.keys()].sort());
            const worst = new WorstError();
            for (const n of model.trainableNames()) {
              worst.add(n, relErr(got.gradW.get(n)!, ref.gradW.get(n)!));
            }
            for (const n of model.adapterNames()) {
              worst.add(`g_A ${n}`, relErr(got.gradA.get(n)!, ref.gradA.get(n)!));
              worst.add(`g_B ${n}`, relErr(got.gradB.get(n)!, ref.gradB.get(n)!));
            }
            const lossErr = Math.abs(got.loss - ref.loss) / ref.loss;
            console.log(`${label} weights: loss rel ${lossErr.toExponential(2)}, worst ${worst}`);
            assert.ok(lossErr < TOL);
            assert.ok(worst.value < TOL, `weight gradients: ${worst}`);
          } finally {
            model.close();
          }
        },
      );
    }

    await t.step("a subset of targets and of trainable weights", async () => {
      const config = GQA_UNTIED;
      const c = makeCase(config, 13, 2);
      const targets: LinearKind[] = ["v_proj", "down_proj"];
      const model = await LlamaGpu.create(gpu, config, c.weights, {
        maxRows: 3,
        seqLen: S,
        maxMicroBatches: 3,
        adapters: { targets, rank: 2 },
        gradients: "adapters",
      });
      const factors = new Map<string, { A: Float32Array; B: Float32Array }>();
      const rng = new Rng(5);
      for (const n of model.adapterNames()) {
        const a = model.adapter(n);
        factors.set(n, { A: rng.normals(a.A.size, 0.3), B: rng.normals(a.B.size, 0.3) });
        model.writeAdapter(n, factors.get(n)!.A, factors.get(n)!.B);
      }
      assert.equal(model.adapterNames().length, 2 * config.num_hidden_layers);
      try {
        model.setAdapterScales(0, 2);
        const got = await gpuStep(model, c.batches);
        const ref = referenceStep(
          config,
          c.weights,
          c.batches,
          referenceAdapters(factors, 2, 2, 0),
        );
        const worst = new WorstError();
        for (const n of model.adapterNames()) {
          worst.add(`g_A ${n}`, relErr(got.gradA.get(n)!, ref.gradA.get(n)!));
          worst.add(`g_B ${n}`, relErr(got.gradB.get(n)!, ref.gradB.get(n)!));
        }
        console.log(`targets v_proj, down_proj: worst ${worst}`);
        assert.ok(worst.value < TOL, `${worst}`);
      } finally {
        model.close();
      }

      // Only layer 1 and the final norm train: the backward stops above layer 0.
      const trainable = (n: string) => n.startsWith("model.layers.1.") || n === "model.norm.weight";
      const full = await LlamaGpu.create(gpu, config, c.weights, {
        maxRows: 3,
        seqLen: S,
        maxMicroBatches: 3,
        gradients: "weights",
        trainable,
      });
      try {
        const got = await gpuStep(full, c.batches);
        const ref = referenceStep(config, c.weights, c.batches);
        const names = [...ref.gradW.keys()].filter(trainable);
        assert.deepEqual(full.trainableNames().sort(), names.sort());
        const worst = new WorstError();
        for (const n of names) worst.add(n, relErr(got.gradW.get(n)!, ref.gradW.get(n)!));
        console.log(`trainable subset: worst ${worst}`);
        assert.ok(worst.value < TOL, `${worst}`);
      } finally {
        full.close();
      }
    });

    await t.step("a step without any target: loss 0 and zero gradients", async () => {
      const config = GQA_UNTIED;
      const c = makeCase(config, 15, 2);
      const model = await LlamaGpu.create(gpu, config, c.weights, {
        maxRows: 3,
        seqLen: S,
        maxMicroBatches: 3,
        adapters: { targets: LINEAR_KINDS, rank: 2 },
        gradients: "weights",
      });
      try {
        for (const n of model.adapterNames()) {
          const a = model.adapter(n);
          model.writeAdapter(n, new Rng(1).normals(a.A.size), new Rng(2).normals(a.B.size));
        }
        const before = await gpuStep(model, c.batches);
        assert.ok(before.loss > 0);
        // The buffers now hold the previous step's gradients; an empty step must clear them.
        const empty = await gpuStep(model, [c.batches[1]]);
        assert.equal(empty.loss, 0);
        for (const m of [empty.gradA, empty.gradB, empty.gradW]) {
          for (const [n, g] of m) assert.ok(g.every((x) => x === 0), `${n} is not zero`);
        }
      } finally {
        model.close();
      }
    });

    await t.step("two runs of a step give identical bits", async () => {
      const config = GQA_TIED;
      const c = makeCase(config, 14, 2);
      const run = async () => {
        const model = await LlamaGpu.create(gpu, config, c.weights, {
          maxRows: 3,
          seqLen: S,
          maxMicroBatches: 3,
          adapters: { targets: LINEAR_KINDS, rank: 2 },
          gradients: "weights",
        });
        try {
          for (const n of model.adapterNames()) {
            const a = model.adapter(n);
            const rng = new Rng(n.length);
            model.writeAdapter(n, rng.normals(a.A.size, 0.3), rng.normals(a.B.size, 0.3));
          }
          model.setAdapterScales(0.5, 0.5);
          return await gpuStep(model, c.batches);
        } finally {
          model.close();
        }
      };
      const a = await run();
      const b = await run();
      assert.equal(a.loss, b.loss);
      for (const key of ["gradA", "gradB", "gradW"] as const) {
        assert.ok(a[key].size > 0);
        for (const [n, g] of a[key]) assert.ok(sameBits(g, b[key].get(n)!), `${key} ${n} differs`);
      }
    });
  } finally {
    gpu.close();
  }
});

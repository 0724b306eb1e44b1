// Activation checkpointing (`recompute: true`): the same loss and gradients, bit for bit, as
// keeping every layer's activations, over a step of several micro-batches (full-weight and
// adapter gradients; a sliding window with biases), with fewer bytes of buffers allocated.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { LINEAR_KINDS, type LlamaConfig } from "../model/config.ts";
import { LlamaGpu, type LlamaGpuOptions } from "../model/llama.ts";
import { sameBits } from "../gpu/check.ts";
import {
  BIASED_WINDOWED,
  type GpuStep,
  gpuStep,
  GQA_TIED,
  randomMicroBatch,
  randomWeights,
  Rng,
} from "./support/model_gpu.ts";

const S = 9;

async function step(
  config: LlamaConfig,
  seed: number,
  options: Omit<LlamaGpuOptions, "maxRows" | "seqLen" | "maxMicroBatches">,
): Promise<{ result: GpuStep; bytes: number; recompute: boolean }> {
  const rng = new Rng(seed);
  const weights = randomWeights(config, rng);
  const batches = [randomMicroBatch(config, rng, 3, S), randomMicroBatch(config, rng, 2, S)];
  // A Gpu of its own, so that the pool's bytes are this model's buffers alone.
  const gpu = await Gpu.open();
  try {
    const model = await LlamaGpu.create(gpu, config, weights, {
      maxRows: 3,
      seqLen: S,
      maxMicroBatches: 2,
      ...options,
    });
    const bytes = gpu.stats().bytes;
    try {
      for (const n of model.adapterNames()) {
        const a = model.adapter(n);
        const r = new Rng(n.length);
        model.writeAdapter(n, r.normals(a.A.size, 0.3), r.normals(a.B.size, 0.3));
      }
      model.setAdapterScales(0.5, 0.5);
      return { result: await gpuStep(model, batches), bytes, recompute: model.options.recompute };
    } finally {
      model.close();
    }
  } finally {
    gpu.close();
  }
}

Deno.test("gpu model: recompute gives the same bits with smaller activations", async (t) => {
  const cases: [string, LlamaConfig, Omit<LlamaGpuOptions, "maxRows" | "seqLen">][] = [
    ["3 layers, tied, full-weight and adapter gradients", { ...GQA_TIED, num_hidden_layers: 3 }, {
      adapters: { targets: LINEAR_KINDS, rank: 2 },
      gradients: "weights",
    }],
    ["sliding window and biases, adapter gradients", BIASED_WINDOWED, {
      adapters: { targets: ["q_proj", "v_proj", "down_proj"], rank: 2 },
      gradients: "adapters",
    }],
  ];
  for (const [name, config, options] of cases) {
    await t.step(name, async () => {
      const kept = await step(config, 21, options);
      const re = await step(config, 21, { ...options, recompute: true });
      assert.ok(!kept.recompute && re.recompute);
      assert.ok(Number.isFinite(kept.result.loss) && kept.result.loss > 0);
      assert.equal(re.result.loss, kept.result.loss);
      let compared = 0;
      for (const key of ["gradA", "gradB", "gradW"] as const) {
        for (const [n, g] of kept.result[key]) {
          assert.ok(sameBits(re.result[key].get(n)!, g), `${key} ${n} differs`);
          compared++;
        }
      }
      assert.ok(compared > 0);
      console.log(`${name}: ${compared} gradients identical; bytes ${kept.bytes} → ${re.bytes}`);
      assert.ok(re.bytes < kept.bytes, `${re.bytes} !< ${kept.bytes}`);
    });
  }
  await t.step("inference ignores it", async () => {
    const gpu = await Gpu.open();
    try {
      const m = await LlamaGpu.create(gpu, GQA_TIED, randomWeights(GQA_TIED, new Rng(3)), {
        maxRows: 1,
        seqLen: S,
        gradients: "none",
        recompute: true,
      });
      assert.equal(m.options.recompute, false);
      m.close();
    } finally {
      gpu.close();
    }
  });
});

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
  GQA_TIED,
  randomWeights,
  Rng,
  stepOnOwnGpu,
} from "./support/model_gpu.ts";

const S = 9;

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
      const kept = await stepOnOwnGpu(config, 21, S, options, [0.5, 0.5]);
      const re = await stepOnOwnGpu(config, 21, S, { ...options, recompute: true }, [0.5, 0.5]);
      assert.ok(!kept.resolved.recompute && re.resolved.recompute);
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

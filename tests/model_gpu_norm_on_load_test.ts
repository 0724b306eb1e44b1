// The decoder layer with its RMSNorms formed in the matmuls' loads (`normOnLoad`, the default)
// against the same model writing the normalized activations (`normOnLoad: false`, the separate
// pass): the same loss and gradients, bit for bit, with full-weight and adapter gradients, the
// numeric mute, a sliding window and biases, recompute; and two [T, C] buffers fewer per layer.
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

type Options = Omit<LlamaGpuOptions, "maxRows" | "seqLen" | "maxMicroBatches">;

async function step(
  config: LlamaConfig,
  options: Options,
  scales: [number, number],
): Promise<{ result: GpuStep; bytes: number; onLoad: boolean }> {
  const rng = new Rng(33);
  const weights = randomWeights(config, rng);
  const batches = [randomMicroBatch(config, rng, 3, S), randomMicroBatch(config, rng, 2, S)];
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
      model.setAdapterScales(...scales);
      const result = await gpuStep(model, batches);
      return { result, bytes, onLoad: model.options.normOnLoad };
    } finally {
      model.close();
    }
  } finally {
    gpu.close();
  }
}

Deno.test("gpu model: RMSNorm on load gives the bits of the written norm", async (t) => {
  const cases: [string, LlamaConfig, Options, [number, number]][] = [
    ["3 layers, tied, full-weight and adapter gradients", { ...GQA_TIED, num_hidden_layers: 3 }, {
      adapters: { targets: LINEAR_KINDS, rank: 2 },
      gradients: "weights",
    }, [0.5, 0.5]],
    ["numeric mute γ = 1e-16", GQA_TIED, {
      adapters: { targets: LINEAR_KINDS, rank: 2 },
      gradients: "adapters",
    }, [1e-16, 0.5]],
    ["sliding window and biases, adapter gradients, recompute", BIASED_WINDOWED, {
      adapters: { targets: ["q_proj", "v_proj", "down_proj"], rank: 2 },
      gradients: "adapters",
      recompute: true,
    }, [0.5, 0.5]],
  ];
  for (const [name, config, options, scales] of cases) {
    await t.step(name, async () => {
      const written = await step(config, { ...options, normOnLoad: false }, scales);
      const onLoad = await step(config, { ...options, normOnLoad: true }, scales);
      assert.ok(!written.onLoad && onLoad.onLoad);
      assert.ok(Number.isFinite(written.result.loss) && written.result.loss > 0);
      assert.equal(onLoad.result.loss, written.result.loss);
      let compared = 0;
      for (const key of ["gradA", "gradB", "gradW"] as const) {
        for (const [n, g] of written.result[key]) {
          assert.ok(sameBits(onLoad.result[key].get(n)!, g), `${key} ${n} differs`);
          compared++;
        }
      }
      assert.ok(compared > 0);
      // Two [T, C] buffers fewer per layer (one set with recompute), as the pool rounds them.
      const sets = options.recompute ? 1 : config.num_hidden_layers;
      const buffer = Math.ceil((3 * S * config.hidden_size * 4) / 256) * 256;
      assert.equal(written.bytes - onLoad.bytes, 2 * sets * buffer);
    });
  }
});

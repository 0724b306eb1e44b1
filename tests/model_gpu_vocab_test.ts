// A whole training step at a real vocabulary size (32,000, LLaMA-2's) against the float64
// reference: loss and every adapter gradient. The loss head's kernels loop over the vocabulary,
// and lavapipe stops an invocation's loops after 65,535 passes (gpu/kernel.ts
// MAX_INVOCATION_LOOP); one invocation per row of the cross-entropy once left most of dlogits at
// 0 from V ≈ 22k on, which put the adapter gradients off by a relative 1e4 here.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { LINEAR_KINDS, type LlamaConfig } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import {
  gpuStep,
  GQA_UNTIED,
  randomAdapterFactors,
  randomMicroBatch,
  randomWeights,
  referenceAdapters,
  referenceStep,
  relErr,
  Rng,
  WorstError,
  writeAdapters,
} from "./support/model_gpu.ts";

Deno.test("gpu model at vocabulary 32000 matches the float64 reference", async () => {
  const config: LlamaConfig = {
    ...GQA_UNTIED,
    hidden_size: 64,
    intermediate_size: 96,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 32000,
  };
  const rows = 2, seqLen = 16, rank = 2, scale = 1.5;
  const rng = new Rng(32000);
  const weights = randomWeights(config, rng);
  const batches = [randomMicroBatch(config, rng, rows, seqLen)];
  const factors = randomAdapterFactors(config, rank, rng);
  const gpu = await Gpu.open();
  try {
    const model = await LlamaGpu.create(gpu, config, weights, {
      maxRows: rows,
      seqLen,
      maxMicroBatches: 1,
      adapters: { targets: LINEAR_KINDS, rank },
      gradients: "adapters",
    });
    try {
      writeAdapters(model, factors);
      model.setAdapterScales(scale, scale);
      const got = await gpuStep(model, batches);
      const ref = referenceStep(
        config,
        weights,
        batches,
        referenceAdapters(factors, rank, scale, scale, model.adapterNames()),
      );
      const lossErr = Math.abs(got.loss - ref.loss) / ref.loss;
      const worst = new WorstError();
      for (const n of model.adapterNames()) {
        worst.add(`g_A ${n}`, relErr(got.gradA.get(n)!, ref.gradA.get(n)!));
        worst.add(`g_B ${n}`, relErr(got.gradB.get(n)!, ref.gradB.get(n)!));
      }
      console.log(`vocab 32000: loss rel ${lossErr.toExponential(2)}, worst gradient ${worst}`);
      assert.ok(lossErr < 1e-5, `loss ${got.loss} vs ${ref.loss}`);
      assert.ok(worst.value < 1e-5, `adapter gradients: ${worst}`);
    } finally {
      model.close();
    }
  } finally {
    gpu.close();
  }
});

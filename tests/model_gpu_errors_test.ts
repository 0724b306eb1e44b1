// Bad input to the GPU model gives typed errors with useful messages, and nothing leaks: wrong
// or missing weights, bad options, too many rows or micro-batches, token ids outside the
// vocabulary, bad generation requests, use after close.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { LINEAR_KINDS, type LinearKind } from "../model/config.ts";
import {
  LlamaError,
  LlamaGpu,
  LlamaInputError,
  LlamaOptionsError,
  LlamaWeightError,
} from "../model/llama.ts";
import type { HostTensor } from "../model/safetensors.ts";
import { GQA_UNTIED, randomMicroBatch, randomWeights, Rng } from "./support/model_gpu.ts";

Deno.test("gpu model rejects bad input with typed errors", async (t) => {
  const config = GQA_UNTIED;
  const rng = new Rng(41);
  const weights = randomWeights(config, rng);
  const gpu = await Gpu.open();
  const inUse = gpu.stats().inUse;
  try {
    await t.step("weights", async () => {
      const q = "model.layers.1.self_attn.q_proj.weight";
      const bad = new Map<string, HostTensor>(weights);
      bad.set(q, { shape: [24, 23], data: new Float32Array(24 * 23) });
      await assert.rejects(
        () => LlamaGpu.create(gpu, config, bad, { maxRows: 1, seqLen: 4, gradients: "none" }),
        (e: unknown) =>
          e instanceof LlamaWeightError && e.tensor === q &&
          /\[24, 23\].*\[24, 24\]/.test(e.message),
      );
      bad.set(q, { shape: [24, 24], data: new Float32Array(10) });
      await assert.rejects(
        () => LlamaGpu.create(gpu, config, bad, { maxRows: 1, seqLen: 4, gradients: "none" }),
        (e: unknown) => e instanceof LlamaWeightError && /576 f32 values/.test(e.message),
      );
      bad.delete(q);
      await assert.rejects(
        () => LlamaGpu.create(gpu, config, bad, { maxRows: 1, seqLen: 4, gradients: "none" }),
        (e: unknown) => e instanceof LlamaWeightError && /missing weight/.test(e.message),
      );
      assert.equal(gpu.stats().inUse, inUse, "a rejected model allocates nothing");
    });

    await t.step("options", async () => {
      const bad = [
        { maxRows: 0, seqLen: 4, gradients: "none" as const },
        { maxRows: 1, seqLen: 4, gradients: "adapters" as const },
        {
          maxRows: 1,
          seqLen: 4,
          gradients: "adapters" as const,
          adapters: { targets: ["qkv_proj" as LinearKind], rank: 2 },
        },
        {
          maxRows: 1,
          seqLen: 4,
          gradients: "adapters" as const,
          adapters: { targets: LINEAR_KINDS, rank: 0 },
        },
        { maxRows: 1, seqLen: 4, gradients: "none" as const, trainable: () => true },
      ];
      for (const o of bad) {
        await assert.rejects(
          () => LlamaGpu.create(gpu, config, weights, o),
          LlamaOptionsError,
          JSON.stringify(o),
        );
      }
      assert.equal(gpu.stats().inUse, inUse);
    });

    await t.step("batches, scales, names, generation, close", async () => {
      const model = await LlamaGpu.create(gpu, config, weights, {
        maxRows: 2,
        seqLen: 6,
        maxMicroBatches: 2,
        adapters: { targets: ["q_proj"], rank: 2 },
        gradients: "adapters",
      });
      const ok = randomMicroBatch(config, rng, 2, 6);
      const rejects = (f: () => unknown, re: RegExp) =>
        assert.throws(f, (e: unknown) => e instanceof LlamaInputError && re.test(e.message));
      rejects(() => model.setStepBatches([randomMicroBatch(config, rng, 3, 6)]), /3 rows/);
      rejects(() => model.setStepBatches([randomMicroBatch(config, rng, 2, 5)]), /length 5/);
      rejects(() => model.setStepBatches([ok, ok, ok]), /1\.\.2 micro-batches/);
      rejects(() => model.setStepBatches([]), /1\.\.2 micro-batches/);
      for (const id of [config.vocab_size, -1]) {
        const ids = ok.ids.slice();
        ids[7] = id;
        rejects(
          () => model.setStepBatches([{ ...ok, ids }]),
          new RegExp(`token id ${id} at row 1, position 1`),
        );
      }
      rejects(() => model.setStepBatches([{ ...ok, ids: ok.ids.slice(1) }]), /Int32Array of 12/);
      await assert.rejects(
        () => model.logits({ ...ok, ids: ok.ids.map(() => config.vocab_size + 3) }),
        LlamaInputError,
      );
      await assert.rejects(
        () => model.generate([[1, 2], [1, config.vocab_size]], { maxNewTokens: 2, stopIds: [] }),
        (e: unknown) => e instanceof LlamaInputError && /prompt 1: token id 37/.test(e.message),
      );
      await assert.rejects(
        () => model.generate([[]], { maxNewTokens: 2, stopIds: [] }),
        LlamaInputError,
      );
      await assert.rejects(
        () => model.generate([[1]], { maxNewTokens: -1, stopIds: [] }),
        LlamaInputError,
      );
      assert.throws(() => model.setAdapterScales(0.5, 1, { gamma: 1e-16 }), LlamaOptionsError);
      assert.throws(() => model.setAdapterScales(0, 1, { gamma: 0 }), LlamaOptionsError);
      assert.throws(() => model.setAdapterScales(NaN, 1), LlamaOptionsError);
      assert.throws(() => model.weightGrad("model.norm.weight"), LlamaWeightError);
      assert.throws(
        () => model.adapter("model.layers.0.self_attn.k_proj.weight"),
        LlamaWeightError,
      );
      assert.throws(() => model.weight("lm_head"), LlamaWeightError);
      assert.throws(
        () => model.writeWeight("model.norm.weight", new Float32Array(3)),
        LlamaWeightError,
      );
      assert.throws(
        () => model.writeAdapter(model.adapterNames()[0], new Float32Array(3), new Float32Array(3)),
        LlamaWeightError,
      );
      model.close();
      model.close();
      assert.throws(() => model.setStepBatches([ok]), LlamaError);

      const inference = await LlamaGpu.create(gpu, config, weights, {
        maxRows: 1,
        seqLen: 6,
        gradients: "none",
      });
      try {
        const rec = gpu.record();
        assert.throws(() => inference.recordForwardBackward(rec), LlamaOptionsError);
        rec.discard();
      } finally {
        inference.close();
      }
      assert.equal(gpu.stats().inUse, inUse, "close releases every buffer");
    });
  } finally {
    gpu.close();
  }
});

// Linear layers over the binding limit (lowered through Gpu.open's maxBindingBytes so the model
// stays small; tests/gpu_matmul_rows_test.ts covers the device's real limit): q/o and the MLP's
// matrices are held as row blocks, invisibly to the layers, and a training step matches the
// float64 reference (loss, logits, adapter gradients, full-weight gradients of the split
// matrices) and the same model with every matrix whole; greedy generation (the KV cache's
// one-row products) with every matrix, the tables too, in blocks equals the reference.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { LINEAR_KINDS, linearName, type LlamaConfig } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import { type ReferenceAdapter, referenceGreedy } from "../model/reference/llama.ts";
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

const config: LlamaConfig = {
  ...GQA_UNTIED,
  hidden_size: 64,
  intermediate_size: 96,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  num_hidden_layers: 2,
  vocab_size: 37,
};
const rows = 2, seqLen = 12, rank = 2, scale = 1.5;
// 12 KiB: q/o [64, 64] (16 KiB) and gate/up/down (24 KiB) split in two; k/v (8 KiB), the
// activations ([24, 96] f32 = 9 KiB) and the tables stay whole.
const LIMIT = 12 * 1024;

Deno.test("linears over the binding limit as row blocks match the float64 reference", async () => {
  const rng = new Rng(4096);
  const weights = randomWeights(config, rng);
  const batches = [randomMicroBatch(config, rng, rows, seqLen)];
  const factors = randomAdapterFactors(config, rank, rng);
  // normOnLoad: the layers' RMSNorms read in the split matmuls' loads (the default on GPUs;
  // lavapipe writes them), so the row-block path takes the norm too.
  const run = async (limit: number | undefined, normOnLoad = false) => {
    const gpu = await Gpu.open(limit ? { maxBindingBytes: limit } : {});
    try {
      const model = await LlamaGpu.create(gpu, config, weights, {
        maxRows: rows,
        seqLen,
        adapters: { targets: LINEAR_KINDS, rank },
        gradients: "weights",
        normOnLoad,
      });
      try {
        writeAdapters(model, factors);
        model.setAdapterScales(scale, scale);
        const blocks = new Map(
          LINEAR_KINDS.map((k) => {
            const m = model.weightMatrix(linearName(0, k));
            return [k, "parts" in m ? m.parts.length : 1];
          }),
        );
        const step = await gpuStep(model, batches);
        const logits = await model.logits(batches[0]);
        const readBack = await model.readWeights();
        return { step, logits, blocks, readBack };
      } finally {
        model.close();
      }
    } finally {
      gpu.close();
    }
  };
  const split = await run(LIMIT);
  assert.deepEqual(Object.fromEntries(split.blocks), {
    q_proj: 2,
    k_proj: 1,
    v_proj: 1,
    o_proj: 2,
    gate_proj: 2,
    up_proj: 2,
    down_proj: 2,
  });
  const whole = await run(undefined);
  const splitOnLoad = await run(LIMIT, true);
  assert.ok([...whole.blocks.values()].every((n) => n === 1));
  // The split weights read back as they were uploaded.
  for (const [n, t] of split.readBack) assert.deepEqual(t.data, weights.get(n)!.data, n);

  const ref = referenceStep(
    config,
    weights,
    batches,
    referenceAdapters(factors, rank, scale, scale),
  );
  const variants = [["split", split], ["whole", whole], ["split, norm on load", splitOnLoad]];
  for (const [what, got] of variants as [string, typeof split][]) {
    const lossErr = Math.abs(got.step.loss - ref.loss) / ref.loss;
    const worstA = new WorstError();
    for (const [n, g] of got.step.gradA) worstA.add(`g_A ${n}`, relErr(g, ref.gradA.get(n)!));
    for (const [n, g] of got.step.gradB) worstA.add(`g_B ${n}`, relErr(g, ref.gradB.get(n)!));
    const worstW = new WorstError();
    for (const [n, g] of got.step.gradW) worstW.add(n, relErr(g, ref.gradW.get(n)!));
    const logitsErr = relErr(got.logits, ref.logits[0]);
    console.log(
      `${what}: loss rel ${lossErr.toExponential(2)}, logits ${logitsErr.toExponential(2)}, ` +
        `adapter grads ${worstA}, weight grads ${worstW}`,
    );
    assert.ok(lossErr < 1e-5, `${what} loss ${got.step.loss} vs ${ref.loss}`);
    assert.ok(logitsErr < 1e-5, `${what} logits ${logitsErr}`);
    assert.ok(worstA.value < 1e-5, `${what} adapter gradients ${worstA}`);
    assert.ok(worstW.value < 1e-5, `${what} weight gradients ${worstW}`);
    assert.ok(got.step.gradW.has(linearName(1, "down_proj")));
  }
  // Each logit is one dot product either way: the same bits.
  assert.deepEqual(split.logits, whole.logits);
  assert.deepEqual(splitOnLoad.logits, whole.logits);
  assert.deepEqual(splitOnLoad.step.loss, split.step.loss);
});

Deno.test("without adapters the residual add rides in the split o_proj/down_proj products", async () => {
  // No adapter term: the base product is the last matmul writing o_proj's and down_proj's
  // output, so the residual goes into the row blocks' pass (gpu/kernels/matmul_rows.ts).
  const rng = new Rng(8192);
  const weights = randomWeights(config, rng);
  const batch = randomMicroBatch(config, rng, rows, seqLen);
  const logits = async (limit: number | undefined, normOnLoad: boolean) => {
    const gpu = await Gpu.open(limit ? { maxBindingBytes: limit } : {});
    try {
      const model = await LlamaGpu.create(gpu, config, weights, {
        maxRows: rows,
        seqLen,
        gradients: "none",
        normOnLoad,
      });
      try {
        const m = model.weightMatrix(linearName(0, "down_proj"));
        assert.equal("parts" in m ? m.parts.length : 1, limit ? 2 : 1);
        return await model.logits(batch);
      } finally {
        model.close();
      }
    } finally {
      gpu.close();
    }
  };
  const whole = await logits(undefined, false);
  const ref = referenceStep(config, weights, [batch], referenceAdapters(new Map(), 0, 0, 0));
  assert.ok(relErr(whole, ref.logits[0]) < 1e-5, "the whole model against float64");
  for (const onLoad of [false, true]) {
    assert.deepEqual(await logits(LIMIT, onLoad), whole, `split, norm on load ${onLoad}`);
  }
});

Deno.test("greedy generation with the linears, the embedding and lm_head in row blocks equals the reference", async () => {
  // Vocabulary 300: the tables ([300, 64] f32, 75 KiB) split too, so every matrix the decoding
  // path reads (its one-row products, the KV cache's projections, the head) is in row blocks.
  const big: LlamaConfig = { ...config, vocab_size: 300 };
  const rng = new Rng(2048);
  const weights = randomWeights(big, rng);
  const factors = randomAdapterFactors(big, rank, rng);
  const prompts = [5, 1, 8].map((n) =>
    Array.from({ length: n }, (_, i) => i === 0 ? 1 : rng.int(big.vocab_size))
  );
  const maxNew = 7;
  const generate = async (limit: number | undefined) => {
    const gpu = await Gpu.open(limit ? { maxBindingBytes: limit } : {});
    try {
      const model = await LlamaGpu.create(gpu, big, weights, {
        maxRows: 2,
        seqLen: 16,
        adapters: { targets: LINEAR_KINDS, rank },
        gradients: "adapters",
      });
      try {
        writeAdapters(model, factors);
        model.setAdapterScales(0.5, scale);
        const head = model.weightMatrix("lm_head.weight");
        const down = model.weightMatrix(linearName(1, "down_proj"));
        const blocks = [head, down].map((m) => "parts" in m ? m.parts.length : 1);
        const tokens = await model.generate(prompts, { maxNewTokens: maxNew, stopIds: [] });
        return { tokens, blocks };
      } finally {
        model.close();
      }
    } finally {
      gpu.close();
    }
  };
  const split = await generate(LIMIT);
  assert.ok(split.blocks.every((n) => n > 1), `lm_head and down_proj in blocks: ${split.blocks}`);
  const adapters = new Map<string, ReferenceAdapter>(
    [...factors].map(([n, f]) => [n, { A: f.A, B: f.B, rank, scale, sigma: 0.5 }]),
  );
  const ref = prompts.map((p) => referenceGreedy(big, weights, p, maxNew, [], { adapters }));
  console.log(`split: ${JSON.stringify(split.tokens)}`);
  assert.deepEqual(split.tokens, ref);
  const whole = await generate(undefined);
  assert.deepEqual(whole.blocks, [1, 1]);
  assert.deepEqual(split.tokens, whole.tokens);
});

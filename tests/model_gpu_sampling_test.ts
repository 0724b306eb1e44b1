// Host-side token choice in generate() on the shipped byte model: the host argmax gives the
// device's greedy tokens, a seed repeats its tokens whatever the batching, and the streamed
// tokens are the returned ones.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { LlamaGpu } from "../model/llama.ts";
import { loadModelFolder } from "../model/safetensors.ts";
import { GREEDY, makeSampler } from "../model/sampling.ts";

Deno.test("generate: host sampling on models/base", async () => {
  const folder = await loadModelFolder("models/base");
  const gpu = await Gpu.open();
  try {
    const model = await LlamaGpu.create(gpu, folder.config, folder.tensors, {
      maxRows: 1,
      seqLen: 1,
      gradients: "none",
    });
    try {
      const enc = (s: string) => [1, ...new TextEncoder().encode(s)].map((b, i) => i ? b + 3 : b);
      const prompts = ["What is 2+3?", "Hi", "Tell me a story about a cat."].map(enc);
      const opts = { maxNewTokens: 12, stopIds: [2] };
      const greedy = await model.generate(prompts, opts);
      const hostGreedy = await model.generate(prompts, { ...opts, sample: makeSampler(GREEDY, 0) });
      assert.deepEqual(hostGreedy, greedy);

      const params = { ...GREEDY, doSample: true, temperature: 1.2, topK: 40, topP: 0.95 };
      const streamed = prompts.map(() => [] as number[]);
      const a = await model.generate(prompts, {
        ...opts,
        sample: makeSampler(params, 5),
        onToken: (s, id) => {
          streamed[s].push(id);
        },
      });
      const b = await model.generate(prompts, {
        ...opts,
        batchSize: 1,
        sample: makeSampler(params, 5),
      });
      assert.deepEqual(a, b);
      assert.deepEqual(streamed, a);
      const c = await model.generate(prompts, { ...opts, sample: makeSampler(params, 6) });
      assert.notDeepEqual(c, a);

      const gStream = prompts.map(() => [] as number[]);
      await model.generate(prompts, { ...opts, onToken: (s, id) => void gStream[s].push(id) });
      assert.deepEqual(gStream, greedy);
    } finally {
      model.close();
    }
  } finally {
    gpu.close();
  }
});

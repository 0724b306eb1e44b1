// Greedy generation with the KV cache against the float64 reference (which recomputes the
// whole prefix for every token): prompts of different lengths (one of a single token), more
// prompts than one batch, more new tokens than one submit records, stop ids, σ ≠ 0 adapters;
// every PyTorch fixture model (biases, scaled RoPE, Mistral's sliding window while decoding);
// and identical results when run twice.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { LINEAR_KINDS } from "../model/config.ts";
import { LlamaGpu, LlamaInputError } from "../model/llama.ts";
import { type ReferenceAdapter, referenceGreedy } from "../model/reference/llama.ts";
import { loadModelFolder } from "../model/safetensors.ts";
import { GQA_UNTIED, randomAdapterFactors, randomWeights, Rng } from "./support/model_gpu.ts";
import { FIXTURE_NAMES, requireFixture } from "./support/fixture.ts";

Deno.test("gpu greedy generation equals the reference", async (t) => {
  const gpu = await Gpu.open();
  try {
    await t.step("random GQA model: batches, lengths, stop ids, adapters", async () => {
      const config = GQA_UNTIED;
      const rng = new Rng(31);
      const weights = randomWeights(config, rng);
      const lengths = [5, 1, 9, 3, 7];
      const prompts = lengths.map((n) =>
        Array.from({ length: n }, (_, i) => i === 0 ? 1 : rng.int(config.vocab_size))
      );
      const maxNew = 11;
      const model = await LlamaGpu.create(gpu, config, weights, {
        maxRows: 2,
        seqLen: 8,
        adapters: { targets: LINEAR_KINDS, rank: 2 },
        gradients: "adapters",
      });
      try {
        const factors = randomAdapterFactors(config, 2, rng);
        for (const [n, f] of factors) model.writeAdapter(n, f.A, f.B);
        for (const sigma of [0, 0.5]) {
          model.setAdapterScales(sigma, 0.5);
          const adapters = new Map<string, ReferenceAdapter>(
            [...factors].map(([n, f]) => [n, { A: f.A, B: f.B, rank: 2, scale: 0.5, sigma }]),
          );
          const ref = prompts.map((p) =>
            referenceGreedy(config, weights, p, maxNew, [], { adapters })
          );
          const got = await model.generate(prompts, {
            maxNewTokens: maxNew,
            stopIds: [],
            batchSize: 2,
          });
          console.log(`σ=${sigma}: ${JSON.stringify(got)}`);
          assert.deepEqual(got, ref);
          // Stop at a token that occurs inside some sequence (not at its first step).
          const stop = ref[2][4];
          const refStop = prompts.map((p) =>
            referenceGreedy(config, weights, p, maxNew, [stop], { adapters })
          );
          assert.ok(refStop.some((r) => r.length < maxNew), "the stop id ends some sequence");
          const gotStop = await model.generate(prompts, {
            maxNewTokens: maxNew,
            stopIds: [stop],
            batchSize: 3,
          });
          assert.deepEqual(gotStop, refStop);
          // Every sequence stopping early ends decoding early too.
          const firsts = [...new Set(ref.map((r) => r[0]))];
          const early = await model.generate(prompts, { maxNewTokens: maxNew, stopIds: firsts });
          assert.deepEqual(early, ref.map((r) => [r[0]]));
        }
        assert.deepEqual(await model.generate(prompts, { maxNewTokens: 0, stopIds: [] }), [
          [],
          [],
          [],
          [],
          [],
        ]);
        assert.deepEqual(await model.generate([], { maxNewTokens: 3, stopIds: [] }), []);
        const again = await model.generate(prompts, { maxNewTokens: maxNew, stopIds: [] });
        assert.deepEqual(
          again,
          await model.generate(prompts, { maxNewTokens: maxNew, stopIds: [] }),
        );
      } finally {
        model.close();
      }
    });

    for (const name of FIXTURE_NAMES) {
      await t.step(`the PyTorch fixture model: ${name}`, async () => {
        const dir = await requireFixture(name);
        const { config, tensors } = await loadModelFolder(dir);
        const meta = JSON.parse(await Deno.readTextFile(new URL("expected.json", dir)));
        const ids: number[][] = meta.input_ids;
        // Dynamic RoPE scaling changes the frequencies past max_position_embeddings (12 here),
        // which generation refuses: its prompts stay within.
        const dynamic = config.rope_scaling?.rope_type === "dynamic";
        const prompts = dynamic
          ? [ids[0].slice(0, 6), ids[1].slice(0, 3)]
          : [ids[0].slice(0, 12), ids[1].slice(0, 6), ids[1]];
        const model = await LlamaGpu.create(gpu, config, tensors, {
          maxRows: 1,
          seqLen: 4,
          gradients: "none",
        });
        try {
          const got = await model.generate(prompts, { maxNewTokens: 6, stopIds: [] });
          const ref = prompts.map((p) => referenceGreedy(config, tensors, p, 6, []));
          console.log(`${name}: ${JSON.stringify(got)}`);
          assert.deepEqual(got, ref);
          if (dynamic) {
            await assert.rejects(
              model.generate([ids[1]], { maxNewTokens: 2, stopIds: [] }),
              (e: unknown) => e instanceof LlamaInputError && /dynamic/.test(e.message),
            );
          }
        } finally {
          model.close();
        }
      });
    }
  } finally {
    gpu.close();
  }
});

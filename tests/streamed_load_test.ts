// A worker's streamed load (one tensor, or one row block of the split tables, at a time) puts
// the same bits on the device as the load from W in host memory: from a sharded BF16 folder and
// from safetensors bytes (the object store's path), at f32 and bf16 device weights.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { Rng } from "../core/rng.ts";
import type { LlamaConfig } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import {
  inspectModelFolder,
  loadModelFolder,
  parseSafetensors,
  saveModelFolder,
  serializeSafetensors,
  streamModelFolder,
  streamSafetensorsBytes,
} from "../model/safetensors.ts";
import { GQA_TIED, randomWeights } from "./support/model_gpu.ts";

const CONFIG: LlamaConfig = {
  ...GQA_TIED,
  intermediate_size: 37,
  vocab_size: 2001,
  tie_word_embeddings: false,
};

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

Deno.test("streamed load: the same device bits as the load from host memory", async () => {
  const weights = randomWeights(CONFIG, new Rng(21));
  const dir = await Deno.makeTempDir({ prefix: "streamed-load-" });
  try {
    // Small shards: the tensors come from several files.
    await saveModelFolder(dir, CONFIG, weights, { dtype: "BF16", maxShardBytes: 64 * 1024 });
    const layout = await inspectModelFolder(dir);
    assert.ok(layout.files.length > 1, "the folder is sharded");
    const whole = await loadModelFolder(dir);
    const bytes = serializeSafetensors(weights, { format: "pt" });
    const fromBytes = parseSafetensors(bytes).tensors;
    for (const weightsDtype of ["f32", "bf16"] as const) {
      // A 16 KiB binding limit splits the embedding table and the head into row blocks.
      const gpu = await Gpu.open({ maxBindingBytes: 16 * 1024 });
      try {
        const options = { maxRows: 1, seqLen: 4, gradients: "none" as const, weightsDtype };
        const read = async (w: Parameters<typeof LlamaGpu.create>[2]) => {
          const m = await LlamaGpu.create(gpu, CONFIG, w, options);
          const out = await m.readWeights();
          m.close();
          return out;
        };
        const cases = [
          ["folder", whole.tensors, () => streamModelFolder(layout)],
          ["bytes", fromBytes, () => ({
            tensors: streamSafetensorsBytes(bytes).tensors,
            close: () => {},
          })],
        ] as const;
        for (const [label, held, stream] of cases) {
          const want = await read(held);
          const s = stream();
          const got = await read({ streamed: s.tensors });
          s.close();
          assert.equal(got.size, want.size);
          let splitRows = 0;
          for (const [name, t] of want) {
            const g = got.get(name);
            assert.ok(g, `${label}: ${name} loaded`);
            assert.deepEqual(g.shape, t.shape);
            assert.deepEqual(bytesOf(g.data), bytesOf(t.data), `${label} ${weightsDtype}: ${name}`);
            if (name === "lm_head.weight") splitRows = t.shape[0];
          }
          assert.equal(splitRows, CONFIG.vocab_size);
        }
      } finally {
        gpu.close();
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("streamed load: a row range outside the tensor is refused", async () => {
  const weights = randomWeights(CONFIG, new Rng(22));
  const { tensors } = streamSafetensorsBytes(serializeSafetensors(weights, { format: "pt" }));
  const t = tensors.get("lm_head.weight")!;
  assert.equal((await t.rows(1, 2)).length, 2 * CONFIG.hidden_size);
  await assert.rejects(() => t.rows(CONFIG.vocab_size - 1, 2), /rows 2000\.\.2002/);
});

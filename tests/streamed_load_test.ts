// A worker's streamed load (one tensor, or one row block of the split tables, at a time) puts
// the same bits on the device as the upload of W from host memory in one go: from a sharded BF16
// folder, from safetensors bytes (the object store's path) and from W in host memory (what
// `LlamaGpu.create` does with a map), at f32 and bf16 device weights.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { Rng } from "../core/rng.ts";
import type { LlamaConfig } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import { hostRows, LlamaParams } from "../model/llama_params.ts";
import {
  type HostTensor,
  inspectModelFolder,
  loadModelFolder,
  parseSafetensors,
  saveModelFolder,
  serializeSafetensors,
  streamModelFolder,
  streamSafetensorsBytes,
  type TensorRows,
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
        const options = { gradNames: [], weightsDtype };
        // Every weight's device words, the split tables' blocks one after another.
        const readBack = async (p: LlamaParams) => {
          const out = new Map<string, { shape: number[]; data: Uint8Array }>();
          for (const name of p.names) {
            const parts = p.rowParts.get(name)?.parts ?? [p.weights.get(name)!];
            const got = await gpu.readMany(parts);
            const bytes = got.map(bytesOf);
            const whole = new Uint8Array(bytes.reduce((a, b) => a + b.length, 0));
            let at = 0;
            for (const b of bytes) {
              whole.set(b, at);
              at += b.length;
            }
            const shape = parts.length > 1
              ? [p.rowParts.get(name)!.rows, p.rowParts.get(name)!.cols]
              : [...parts[0].shape];
            out.set(name, { shape, data: whole });
          }
          p.release();
          return out;
        };
        // The reference: W uploaded from host memory in one go, as before streaming.
        const reference = (w: Map<string, HostTensor>) =>
          readBack(LlamaParams.create(gpu, CONFIG, w, options));
        const read = async (w: ReadonlyMap<string, TensorRows>) =>
          readBack(await LlamaParams.createStreamed(gpu, CONFIG, w, options));
        const cases = [
          ["folder", whole.tensors, () => streamModelFolder(layout)],
          ["bytes", fromBytes, () => ({
            tensors: streamSafetensorsBytes(bytes).tensors,
            close: () => {},
          })],
          ["host memory", whole.tensors, () => ({
            tensors: hostRows(whole.tensors),
            close: () => {},
          })],
        ] as const;
        for (const [label, held, stream] of cases) {
          const want = await reference(held);
          const s = stream();
          const got = await read(s.tensors);
          s.close();
          assert.equal(got.size, want.size);
          let splitRows = 0;
          for (const [name, t] of want) {
            const g = got.get(name);
            assert.ok(g, `${label}: ${name} loaded`);
            assert.deepEqual(g.shape, t.shape);
            assert.deepEqual(g.data, t.data, `${label} ${weightsDtype}: ${name}`);
            if (name === "lm_head.weight") splitRows = t.shape[0];
          }
          assert.equal(splitRows, CONFIG.vocab_size);
          // The same weights through the model: what a worker's load builds.
          if (label !== "bytes") continue;
          const m = await LlamaGpu.create(gpu, CONFIG, { streamed: s.tensors }, {
            maxRows: 1,
            seqLen: 4,
            gradients: "none",
            weightsDtype,
          });
          const back = await m.readWeights();
          m.close();
          if (weightsDtype === "f32") {
            for (const [name, t] of fromBytes) {
              assert.deepEqual(back.get(name)!.data, t.data, `model ${name}`);
            }
          }
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

// W through the object store in chunks (actors/stored_weights.ts): with a chunk far smaller than
// W (and than its larger tensors), a worker's store load ends on the same device bits as its load
// from the model folder, while the driver never held more than one chunk for the store (its
// counter, not RSS); a changed, missing or mis-announced object is a StoredWeightsError naming
// the tensor, also across the actor boundary, with nothing left waiting.
import assert from "node:assert/strict";
import { GpuWorker } from "../actors/gpu_worker.ts";
import {
  putStoredWeights,
  StoreBytes,
  StoredWeightsError,
  streamStoredWeights,
} from "../actors/stored_weights.ts";
import { Gpu } from "../gpu/engine.ts";
import { expectedTensors } from "../model/config.ts";
import { weightFileDigests } from "../model/folder_digest.ts";
import { LlamaParams } from "../model/llama_params.ts";
import {
  inspectModelFolder,
  loadModelFolder,
  parseSafetensors,
  streamModelFolder,
  type TensorRows,
} from "../model/safetensors.ts";
import type { WeightSource } from "../actors/messages.ts";
import { init } from "../runtime/mod.ts";
import { workerSettings } from "../train/cli/options.ts";
import { TINY_CONFIG, tinyOptions, writeTinySetup } from "./support/tiny_run.ts";

/**
 * 3000 bytes, not a whole number of rows (32 f32): the embedding table and the head (259 × 32
 * f32, 33 KiB) take 12 chunks each, the MLP matrices 3, and chunks start mid-row.
 */
const CHUNK = 3000;

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Each weight's device bytes after a streamed load (the split tables' blocks in order). */
async function deviceBytes(
  gpu: Gpu,
  weights: ReadonlyMap<string, TensorRows>,
): Promise<Map<string, Uint8Array>> {
  const p = await LlamaParams.createStreamed(gpu, TINY_CONFIG, weights, { gradNames: [] });
  try {
    const out = new Map<string, Uint8Array>();
    for (const name of p.names) {
      const parts = p.rowParts.get(name)?.parts ?? [p.weights.get(name)!];
      const got = (await gpu.readMany(parts)).map(bytesOf);
      const whole = new Uint8Array(got.reduce((a, b) => a + b.length, 0));
      let at = 0;
      for (const b of got) {
        whole.set(b, at);
        at += b.length;
      }
      out.set(name, whole);
    }
    return out;
  } finally {
    p.release();
  }
}

Deno.test("store load in chunks: the folder's bits, the driver holding at most one chunk", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-stored-" });
  const system = await init({ nodes: 1 });
  try {
    await writeTinySetup(dir);
    const folder = `${dir}/model`;
    const base = await loadModelFolder(folder);
    const store = await system.objects();
    const counter = new StoreBytes();
    const put = await putStoredWeights(store, "t.weights.g0", TINY_CONFIG, base.tensors, {
      chunkBytes: CHUNK,
      counter,
    });
    const total = [...base.tensors.values()].reduce((n, t) => n + 4 * t.data.length, 0);
    assert.ok(total > 20 * CHUNK, `W ${total} bytes against chunks of ${CHUNK}`);
    // The counter's peak: one chunk, never W (nor two chunks).
    assert.ok(counter.peak > 0 && counter.peak <= CHUNK, `peak ${counter.peak}`);
    assert.equal(counter.current, 0);
    const tensors = expectedTensors(TINY_CONFIG).length;
    assert.ok(counter.chunks > tensors, `${counter.chunks} chunks for ${tensors} tensors`);
    assert.equal(put.objects.length, counter.chunks + 1);
    for (const o of put.objects.filter((o) => o !== put.name)) {
      const size = (await store.info(o))!.size;
      assert.ok(size > 0 && size <= CHUNK, `${o}: ${size} bytes`);
    }

    // In this process, with an 8 KiB binding limit: the head's row blocks cut across chunks.
    const gpu = await Gpu.open({ maxBindingBytes: 8 * 1024 });
    try {
      const layout = await inspectModelFolder(folder);
      const fromFolder = streamModelFolder(layout);
      const want = await deviceBytes(gpu, fromFolder.tensors);
      fromFolder.close();
      const fromStore = await streamStoredWeights(store, put.name, put.digest);
      assert.deepEqual(fromStore.config, TINY_CONFIG);
      const got = await deviceBytes(gpu, fromStore.tensors.tensors);
      fromStore.tensors.close();
      assert.equal(got.size, want.size);
      for (const [name, bytes] of want) assert.deepEqual(got.get(name), bytes, name);
    } finally {
      gpu.close();
    }

    // Through worker processes, the load message as the driver sends it: the same W back.
    const o = tinyOptions(dir);
    const w0 = await system.spawn(GpuWorker, { worker: 0 });
    const w1 = await system.spawn(GpuWorker, { worker: 1 });
    const load = (weights: WeightSource, w: typeof w0) =>
      w.load({
        weights,
        seqLen: o.seqLen,
        microBatch: o.microBatch,
        maxMicroBatches: 1,
        settings: workerSettings(o),
        updateSubject: "stored.update",
        updateFloats: 1,
      }, { timeoutMs: 120_000 });
    await load({ via: "store", name: put.name, digest: put.digest }, w0);
    await load({ via: "folder", folder, digests: await weightFileDigests(folder) }, w1);
    const exported = async (w: typeof w0, name: string) =>
      parseSafetensors(await store.get((await w.exportWeights({ name })).name)).tensors;
    const a = await exported(w0, "t.export.store");
    const b = await exported(w1, "t.export.folder");
    assert.equal(a.size, b.size);
    for (const [name, t] of b) assert.deepEqual(bytesOf(a.get(name)!.data), bytesOf(t.data), name);
    for (const [name, t] of base.tensors) assert.deepEqual(a.get(name)!.data, t.data, name);
  } finally {
    await system.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("store load: a changed, missing or mis-announced object is a StoredWeightsError", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-stored-" });
  const system = await init({ nodes: 1 });
  try {
    await writeTinySetup(dir);
    const base = await loadModelFolder(`${dir}/model`);
    const store = await system.objects();
    const put = await putStoredWeights(store, "bad.weights.g0", TINY_CONFIG, base.tensors, {
      chunkBytes: CHUNK,
    });
    const manifest = JSON.parse(new TextDecoder().decode(await store.get(put.name)));
    const victim = "model.layers.1.mlp.down_proj.weight";
    const chunks = manifest.tensors.find((t: { name: string }) => t.name === victim).chunks;
    const target: string = chunks[chunks.length - 1].name;

    // Another object under the chunk's name (as anybody with the system's credentials could
    // put): the store's own check passes, the manifest's digest does not.
    const changed = (await store.get(target)).slice();
    changed[0] ^= 1;
    await store.put(target, changed);
    const s = await streamStoredWeights(store, put.name, put.digest);
    const rows = s.tensors.tensors.get(victim)!;
    await assert.rejects(
      () => rows.rows(0, rows.shape[0]),
      (e: unknown) =>
        e instanceof StoredWeightsError && e.tensor === victim && e.object === target &&
        /is not the one the driver put/.test(e.message) && e.message.includes(victim),
    );
    // An untouched tensor still reads.
    const q = s.tensors.tensors.get("model.layers.0.self_attn.q_proj.weight")!;
    assert.equal((await q.rows(0, q.shape[0])).length, q.shape.reduce((a, b) => a * b, 1));

    // The same through a worker: the load fails with the typed error, fields and all.
    const o = tinyOptions(dir);
    const w = await system.spawn(GpuWorker, { worker: 0 });
    const load = (name: string, digest: string) =>
      w.load({
        weights: { via: "store", name, digest },
        seqLen: o.seqLen,
        microBatch: o.microBatch,
        maxMicroBatches: 1,
        settings: workerSettings(o),
        updateSubject: "bad.update",
        updateFloats: 1,
      }, { timeoutMs: 120_000 }).then(() => null, (e) => e);
    const e1 = await load(put.name, put.digest);
    assert.ok(e1 instanceof StoredWeightsError, String(e1));
    assert.equal(e1.tensor, victim);
    assert.equal(e1.object, target);

    // A missing chunk.
    await store.delete(target);
    const e2 = await load(put.name, put.digest);
    assert.ok(e2 instanceof StoredWeightsError, String(e2));
    assert.equal(e2.tensor, victim);
    assert.match(e2.message, /cannot be read: .*not found/);

    // A manifest that is not the one announced.
    const e3 = await load(put.name, "SHA-256=" + "A".repeat(43) + "=");
    assert.ok(e3 instanceof StoredWeightsError, String(e3));
    assert.equal(e3.tensor, null);
    assert.match(e3.message, /manifest .* is not the one the driver put/);
  } finally {
    await system.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

// W through the object store as packed chunks (actors/stored_weights.ts): with a chunk far
// smaller than W (and than its larger tensors), small tensors share a chunk and large ones span
// several; a worker's store load, reading each chunk once, ends on the same device bits as its
// load from the model folder, while the driver never held more than one chunk for the store (its
// counter, not RSS); a changed, missing, mis-announced or inconsistent object is a
// StoredWeightsError naming the chunk and its tensors, also across the actor boundary, with
// nothing left waiting.
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
 * f32, 33 KiB) span 12 chunks each, the norms (128 bytes) share chunks with their neighbours,
 * and chunks start mid-row and mid-tensor.
 */
const CHUNK = 3000;

/** A short window for gets of objects that will never turn up (the default is 30 s). */
const WAIT_MS = 200;

interface Manifest {
  chunks: { name: string; bytes: number; digest: string }[];
  tensors: { name: string; shape: number[]; offset: number }[];
}

/** Per chunk of a manifest, the tensors with values in it. */
function tensorsPerChunk(m: Manifest): string[][] {
  let start = 0;
  return m.chunks.map((c) => {
    const lo = start;
    start += c.bytes / 4;
    return m.tensors.filter((t) => {
      const n = t.shape.reduce((a, b) => a * b, 1);
      return n > 0 && t.offset < start && t.offset + n > lo;
    }).map((t) => t.name);
  });
}

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

Deno.test("store load in packed chunks: shared and spanned, the folder's bits, the driver holding one chunk", async () => {
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
    // Packed: the chunks are W's bytes in order, all full but the last, whatever the tensors.
    assert.equal(counter.chunks, Math.ceil(total / CHUNK));
    assert.equal(put.objects.length, counter.chunks + 1);
    const chunkObjects = put.objects.filter((o) => o !== put.name);
    for (const [i, o] of chunkObjects.entries()) {
      const size = (await store.info(o))!.size;
      assert.equal(size, i < chunkObjects.length - 1 ? CHUNK : total - CHUNK * i, o);
    }
    const manifest: Manifest = JSON.parse(
      new TextDecoder().decode(await store.get(put.name, { digest: put.digest })),
    );
    assert.deepEqual(manifest.chunks.map((c) => c.name), chunkObjects);
    assert.deepEqual(
      manifest.tensors.map((t) => t.name),
      expectedTensors(TINY_CONFIG).map((t) => t.name),
    );
    const per = tensorsPerChunk(manifest);
    // A chunk holds parts of several tensors, and a tensor spans several chunks.
    assert.ok(per.some((ts) => ts.length >= 3), JSON.stringify(per));
    const embed = per.filter((ts) => ts.includes("model.embed_tokens.weight")).length;
    assert.ok(embed >= 11, `the embedding table in ${embed} chunks`);

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
      // In model order, as the stream is: every chunk fetched once.
      assert.equal(fromStore.chunkReads(), counter.chunks);
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

Deno.test("store load: a changed, missing, mis-announced or inconsistent object is a StoredWeightsError", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-stored-" });
  const system = await init({ nodes: 1 });
  try {
    await writeTinySetup(dir);
    const base = await loadModelFolder(`${dir}/model`);
    const store = await system.objects();
    const put = await putStoredWeights(store, "bad.weights.g0", TINY_CONFIG, base.tensors, {
      chunkBytes: CHUNK,
    });
    const raw = await store.get(put.name);
    const manifest: Manifest = JSON.parse(new TextDecoder().decode(raw));
    const per = tensorsPerChunk(manifest);
    // The chunk where down_proj of layer 1 ends, shared with the tensors after it.
    const victim = "model.layers.1.mlp.down_proj.weight";
    const at = per.findLastIndex((ts) => ts.includes(victim));
    assert.ok(per[at].length >= 2, JSON.stringify(per[at]));
    const target = manifest.chunks[at].name;
    const stream = () => streamStoredWeights(store, put.name, put.digest, { waitMs: WAIT_MS });

    // Another object under the chunk's name (as anybody with the system's credentials could
    // put): the store's own check passes, the manifest's digest does not.
    const changed = (await store.get(target)).slice();
    changed[0] ^= 1;
    await store.put(target, changed);
    const s = await stream();
    const rows = s.tensors.tensors.get(victim)!;
    const isChunkError = (e: unknown, why: RegExp) =>
      e instanceof StoredWeightsError && e.object === target &&
      JSON.stringify(e.tensors) === JSON.stringify(per[at]) && why.test(e.message) &&
      e.message.includes(victim) && e.message.includes(target);
    await assert.rejects(
      () => rows.rows(0, rows.shape[0]),
      (e: unknown) => isChunkError(e, /cannot be read as the driver put it: .*has digest/),
    );
    // An untouched tensor (its chunks come before) still reads.
    const q = s.tensors.tensors.get("model.layers.0.self_attn.q_proj.weight")!;
    assert.equal((await q.rows(0, q.shape[0])).length, q.shape.reduce((a, b) => a * b, 1));

    // The same through a worker: the load fails with the typed error, fields and all, once the
    // worker's get has waited out its window for the announced bytes (30 s: a replica behind).
    const o = tinyOptions(dir);
    const w = await system.spawn(GpuWorker, { worker: 0 });
    const e1 = await w.load({
      weights: { via: "store", name: put.name, digest: put.digest },
      seqLen: o.seqLen,
      microBatch: o.microBatch,
      maxMicroBatches: 1,
      settings: workerSettings(o),
      updateSubject: "bad.update",
      updateFloats: 1,
    }, { timeoutMs: 120_000 }).then(() => null, (e) => e);
    assert.ok(e1 instanceof StoredWeightsError, String(e1));
    assert.equal(e1.object, target);
    assert.deepEqual(e1.tensors, per[at]);

    // A missing chunk.
    await store.delete(target);
    const s2 = await stream();
    const rows2 = s2.tensors.tensors.get(victim)!;
    await assert.rejects(
      () => rows2.rows(0, rows2.shape[0]),
      (e: unknown) => isChunkError(e, /cannot be read as the driver put it: .*not found/),
    );

    // A manifest that is not the one announced.
    await assert.rejects(
      streamStoredWeights(store, put.name, "SHA-256=" + "A".repeat(43) + "=", {
        waitMs: WAIT_MS,
      }),
      (e: unknown) =>
        e instanceof StoredWeightsError && e.object === put.name && e.tensors.length === 0 &&
        /the manifest of the stored weights cannot be read as the driver put it/.test(e.message),
    );

    // Manifests whose digests are right but whose contents do not add up: a tensor moved in
    // the stream, a chunk left out, not JSON.
    const inconsistent = async (name: string, m: unknown, why: RegExp) => {
      const bytes = typeof m === "string" ? new TextEncoder().encode(m) : new TextEncoder().encode(
        JSON.stringify(m),
      );
      const e = await store.put(name, bytes);
      await assert.rejects(
        streamStoredWeights(store, name, e.digest, { waitMs: WAIT_MS }),
        (err: unknown) =>
          err instanceof StoredWeightsError && err.object === name && err.tensors.length === 0 &&
          why.test(err.message),
      );
    };
    const full = JSON.parse(new TextDecoder().decode(raw));
    const moved = structuredClone(full);
    moved.tensors[3].offset += 1;
    await inconsistent("bad.moved", moved, new RegExp(`puts ${moved.tensors[3].name} at element`));
    const short = structuredClone(full);
    short.chunks.pop();
    await inconsistent("bad.short", short, /has tensors of \d+ elements in chunks of \d+/);
    await inconsistent("bad.json", "{", /is malformed/);
  } finally {
    await system.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

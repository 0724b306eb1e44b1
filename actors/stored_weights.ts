/**
 * W through the object store in bounded chunks (docs/architecture.md §6, "GpuWorker"): the
 * driver puts each tensor's f32 values as chunks of at most `chunkBytes` (model/weight_chunks.ts),
 * one at a time, then a manifest naming every chunk with its SHA-256; a worker reads the manifest
 * (checked against the digest its load message carries) and fetches the chunks of each tensor as
 * it uploads them, checking each against the manifest. Neither side ever holds a serialized copy
 * of all of W: the driver one chunk, a worker the chunk it is copying from.
 * @module
 */
import { z } from "zod";
import { DomainError } from "../core/errors.ts";
import type { ObjectStore } from "../runtime/mod.ts";
import {
  expectedTensors,
  type LlamaConfig,
  llamaConfigToJson,
  parseLlamaConfig,
} from "../model/config.ts";
import type { HostTensor, StreamedTensors, TensorRows } from "../model/safetensors.ts";
import {
  chunkRanges,
  decodeChunkInto,
  encodeChunk,
  STORE_CHUNK_BYTES,
} from "../model/weight_chunks.ts";
import { objectDigest } from "./digest.ts";

/** Stored weights that cannot be used: a chunk or the manifest missing, changed or malformed. */
export class StoredWeightsError extends DomainError {
  static override readonly code: string = "STORED_WEIGHTS";
  static readonly fields: z.ZodObject = z.object({
    object: z.string(),
    tensor: z.string().nullable(),
  });
  /** The object-store name at fault. */
  readonly object: string;
  /** The tensor whose chunk it is; null for the manifest. */
  readonly tensor: string | null;
  constructor(message: string, object: string, tensor: string | null) {
    super(message);
    this.object = object;
    this.tensor = tensor;
  }
}

const Chunk = z.object({
  name: z.string(),
  /** First element (row-major) of the tensor in this chunk, and how many. */
  start: z.number().int().min(0),
  count: z.number().int().min(0),
  digest: z.string(),
}).strict();

/** The manifest object: the config and, per tensor in model order, its chunks. */
export const WeightsManifest = z.object({
  config: z.record(z.string(), z.unknown()),
  chunkBytes: z.number().int().min(4),
  tensors: z.array(
    z.object({
      name: z.string(),
      shape: z.array(z.number().int().min(0)),
      chunks: z.array(Chunk).min(1),
    }).strict(),
  ),
}).strict();
export type WeightsManifest = z.infer<typeof WeightsManifest>;

/** The bytes a process has handed to the store and not yet seen stored: now, and at most. */
export class StoreBytes {
  current = 0;
  peak = 0;
  /** Chunk objects put, over all loads. */
  chunks = 0;
  hold(n: number): void {
    this.current += n;
    this.peak = Math.max(this.peak, this.current);
  }
  release(n: number): void {
    this.current -= n;
  }
}

/** What the driver put: the manifest (name, digest) and every object to delete afterwards. */
export interface PutWeights {
  name: string;
  digest: string;
  objects: string[];
}

/**
 * Puts the config's tensors of `weights` under `name` (the manifest) and `name.c<i>` (the
 * chunks), one chunk at a time; `counter` sees every chunk's bytes while the store has them.
 */
export async function putStoredWeights(
  store: ObjectStore,
  name: string,
  config: LlamaConfig,
  weights: ReadonlyMap<string, HostTensor>,
  options: { chunkBytes?: number; counter?: StoreBytes } = {},
): Promise<PutWeights> {
  const chunkBytes = options.chunkBytes ?? STORE_CHUNK_BYTES;
  const counter = options.counter ?? new StoreBytes();
  const manifest: WeightsManifest = { config: llamaConfigToJson(config), chunkBytes, tensors: [] };
  const objects: string[] = [];
  try {
    for (const spec of expectedTensors(config)) {
      const t = weights.get(spec.name);
      if (!t) throw new StoredWeightsError(`no tensor ${spec.name} to store`, name, spec.name);
      const chunks: z.infer<typeof Chunk>[] = [];
      for (const r of chunkRanges(t.data.length, chunkBytes)) {
        const chunk = `${name}.c${objects.length}`;
        const bytes = encodeChunk(t.data, r);
        counter.hold(bytes.byteLength);
        try {
          objects.push(chunk);
          const e = await store.put(chunk, bytes);
          counter.chunks++;
          chunks.push({ name: chunk, start: r.start, count: r.count, digest: e.digest });
        } finally {
          counter.release(bytes.byteLength);
        }
      }
      manifest.tensors.push({ name: spec.name, shape: [...t.shape], chunks });
    }
    const bytes = new TextEncoder().encode(JSON.stringify(manifest));
    objects.push(name);
    const e = await store.put(name, bytes);
    return { name, digest: e.digest, objects };
  } catch (e) {
    await deleteStoredWeights(store, objects);
    throw e;
  }
}

/** Deletes what {@link putStoredWeights} put (missing objects are no error). */
export async function deleteStoredWeights(store: ObjectStore, objects: string[]): Promise<void> {
  for (const o of objects) await store.delete(o).catch(() => {});
}

async function fetchChecked(
  store: ObjectStore,
  object: string,
  digest: string,
  tensor: string | null,
): Promise<Uint8Array> {
  const what = tensor === null ? "the manifest of the stored weights" : `a chunk of ${tensor}`;
  let bytes: Uint8Array;
  try {
    bytes = await store.get(object);
  } catch (e) {
    throw new StoredWeightsError(
      `${what} (${object}) cannot be read: ${(e as Error).message}`,
      object,
      tensor,
    );
  }
  const actual = objectDigest(bytes);
  if (actual !== digest) {
    throw new StoredWeightsError(
      `${what} (${object}) is not the one the driver put: digest ${actual}, expected ${digest}`,
      object,
      tensor,
    );
  }
  return bytes;
}

/**
 * The weights under the manifest `name`, which must have `digest`: the config, and every tensor
 * read on demand, by rows, from the chunks that cover them (the last chunk fetched is kept, as
 * consecutive row blocks often share one). Each chunk is checked against the manifest's digest;
 * anything missing, changed or inconsistent is a StoredWeightsError naming the tensor.
 */
export async function streamStoredWeights(
  store: ObjectStore,
  name: string,
  digest: string,
): Promise<{ config: LlamaConfig; tensors: StreamedTensors }> {
  const raw = await fetchChecked(store, name, digest, null);
  let manifest: WeightsManifest;
  let config: LlamaConfig;
  try {
    manifest = WeightsManifest.parse(JSON.parse(new TextDecoder().decode(raw)));
    config = parseLlamaConfig(manifest.config);
  } catch (e) {
    throw new StoredWeightsError(
      `the manifest of the stored weights (${name}) is malformed: ${(e as Error).message}`,
      name,
      null,
    );
  }
  let cached: { name: string; bytes: Uint8Array } | null = null;
  const tensors = new Map<string, TensorRows>();
  for (const t of manifest.tensors) {
    const elems = t.shape.reduce((a, b) => a * b, 1);
    let at = 0;
    for (const c of t.chunks) {
      if (c.start !== at) break;
      at += c.count;
    }
    if (at !== elems) {
      throw new StoredWeightsError(
        `the stored weights' chunks of ${t.name} do not cover its ${elems} elements`,
        name,
        t.name,
      );
    }
    const cols = t.shape.slice(1).reduce((a, b) => a * b, 1);
    tensors.set(t.name, {
      shape: t.shape,
      dtype: "F32",
      rows: async (start, count) => {
        const rows = t.shape.length === 0 ? 1 : t.shape[0];
        if (
          !Number.isInteger(start) || !Number.isInteger(count) || start < 0 || start + count > rows
        ) {
          throw new StoredWeightsError(
            `rows ${start}..${start + count} of ${t.name} (it has ${rows})`,
            name,
            t.name,
          );
        }
        const from = start * cols;
        const end = (start + count) * cols;
        const out = new Float32Array(end - from);
        for (const c of t.chunks) {
          const lo = Math.max(from, c.start);
          const hi = Math.min(end, c.start + c.count);
          if (lo >= hi) continue;
          if (cached?.name !== c.name) {
            // Dropped before the next fetch, so that at most one chunk is held.
            cached = null;
            cached = { name: c.name, bytes: await fetchChecked(store, c.name, c.digest, t.name) };
          }
          decodeChunkInto(cached.bytes, lo - c.start, hi - lo, out, lo - from);
        }
        return out;
      },
    });
  }
  return {
    config,
    tensors: {
      tensors,
      close: () => {
        cached = null;
      },
    },
  };
}

/**
 * W through the object store in bounded chunks (docs/architecture.md §6, "GpuWorker"): the
 * driver packs the config's tensors, in model order, into one stream of f32 values cut into
 * chunks of at most `chunkBytes` (model/weight_chunks.ts), puts them one at a time, then a
 * manifest naming every chunk with its SHA-256 and every tensor with its offset in the stream. A
 * worker reads the manifest (the digest its load message carries) and the chunks in order as the
 * model uploads its tensors, keeping only the current one; each get names the digest it expects,
 * so that a replica that has not caught up yet is waited for (runtime/objects.ts). Neither side
 * ever holds a serialized copy of all of W: the driver one chunk, a worker the chunk it copies
 * rows from.
 *
 * Packing, not one object per tensor: the count of gets is what a degraded replicated stream
 * makes slow (after a host is lost each can take seconds), so a small model is one chunk and
 * the 1B shape 74, not the 161 of one or more objects per tensor.
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
  chunkCapacity,
  decodeChunkInto,
  packChunks,
  STORE_CHUNK_BYTES,
} from "../model/weight_chunks.ts";

/**
 * Stored weights that cannot be used: a chunk or the manifest missing, changed or malformed.
 * Names the object at fault and the tensors with values in it (none for the manifest).
 */
export class StoredWeightsError extends DomainError {
  static override readonly code: string = "STORED_WEIGHTS";
  static readonly fields: z.ZodObject = z.object({
    object: z.string(),
    tensors: z.array(z.string()),
  });
  /** The object-store name at fault. */
  readonly object: string;
  /** The tensors with values in that chunk, in model order; empty for the manifest. */
  readonly tensors: string[];
  constructor(message: string, object: string, tensors: string[]) {
    super(message);
    this.object = object;
    this.tensors = tensors;
  }
}

const Chunk = z.object({
  name: z.string(),
  bytes: z.number().int().min(4),
  digest: z.string(),
}).strict();

/**
 * The manifest object: the config; the chunks, whose bytes in order are the stream; per tensor
 * in model order its shape and its first element's index in the stream (elements, 4 bytes each).
 */
export const WeightsManifest = z.object({
  config: z.record(z.string(), z.unknown()),
  chunkBytes: z.number().int().min(4),
  chunks: z.array(Chunk),
  tensors: z.array(
    z.object({
      name: z.string(),
      shape: z.array(z.number().int().min(0)),
      offset: z.number().int().min(0),
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
 * chunks of their packed stream), one chunk at a time; `counter` sees every chunk's bytes from
 * the moment it is built until the store has it.
 */
export async function putStoredWeights(
  store: ObjectStore,
  name: string,
  config: LlamaConfig,
  weights: ReadonlyMap<string, HostTensor>,
  options: { chunkBytes?: number; counter?: StoreBytes } = {},
): Promise<PutWeights> {
  const chunkBytes = chunkCapacity(options.chunkBytes ?? STORE_CHUNK_BYTES);
  const counter = options.counter ?? new StoreBytes();
  const manifest: WeightsManifest = {
    config: llamaConfigToJson(config),
    chunkBytes,
    chunks: [],
    tensors: [],
  };
  const data: Float32Array[] = [];
  let offset = 0;
  for (const spec of expectedTensors(config)) {
    const t = weights.get(spec.name);
    if (!t) throw new StoredWeightsError(`no tensor ${spec.name} to store`, name, [spec.name]);
    manifest.tensors.push({ name: spec.name, shape: [...t.shape], offset });
    data.push(t.data);
    offset += t.data.length;
  }
  const objects: string[] = [];
  try {
    for (const bytes of packChunks(data, chunkBytes)) {
      const chunk = `${name}.c${objects.length}`;
      counter.hold(bytes.byteLength);
      try {
        objects.push(chunk);
        const e = await store.put(chunk, bytes);
        counter.chunks++;
        manifest.chunks.push({ name: chunk, bytes: bytes.byteLength, digest: e.digest });
      } finally {
        counter.release(bytes.byteLength);
      }
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

/** Options of {@link streamStoredWeights}. */
export interface StreamStoredOptions {
  /**
   * How long a get waits for an object that is missing or not yet the announced one, as a
   * lagging replica shows it (runtime/objects.ts; default its election window).
   */
  waitMs?: number;
}

/** A manifest checked for consistency: every chunk's first element, the stream's length. */
function checkManifest(m: WeightsManifest, name: string): number[] {
  const bad = (why: string) =>
    new StoredWeightsError(`the manifest of the stored weights (${name}) ${why}`, name, []);
  const starts: number[] = [];
  let elems = 0;
  for (const c of m.chunks) {
    if (c.bytes % 4 !== 0 || c.bytes > m.chunkBytes) {
      throw bad(`lists chunk ${c.name} of ${c.bytes} bytes (whole f32 values, <= ${m.chunkBytes})`);
    }
    starts.push(elems);
    elems += c.bytes / 4;
  }
  let at = 0;
  for (const t of m.tensors) {
    if (t.offset !== at) {
      throw bad(`puts ${t.name} at element ${t.offset}, where the previous tensor ends at ${at}`);
    }
    at += t.shape.reduce((a, b) => a * b, 1);
  }
  if (at !== elems) {
    throw bad(`has tensors of ${at} elements in chunks of ${elems}`);
  }
  return starts;
}

/**
 * The weights under the manifest `name`, which must have `digest`: the config, and every tensor
 * read on demand, by rows, from the chunks that cover them. The chunk last fetched is kept (the
 * model reads in model order, so each chunk is fetched once) and dropped before the next is
 * fetched. Each chunk is checked against the manifest's digest; anything missing, changed or
 * inconsistent is a StoredWeightsError naming the chunk and the tensors in it. `chunkReads`
 * counts the chunk gets.
 */
export async function streamStoredWeights(
  store: ObjectStore,
  name: string,
  digest: string,
  options: StreamStoredOptions = {},
): Promise<{ config: LlamaConfig; tensors: StreamedTensors; chunkReads: () => number }> {
  const raw = await fetchChecked(store, name, digest, [], options);
  let manifest: WeightsManifest;
  let config: LlamaConfig;
  try {
    manifest = WeightsManifest.parse(JSON.parse(new TextDecoder().decode(raw)));
    config = parseLlamaConfig(manifest.config);
  } catch (e) {
    throw new StoredWeightsError(
      `the manifest of the stored weights (${name}) is malformed: ${(e as Error).message}`,
      name,
      [],
    );
  }
  const starts = checkManifest(manifest, name);
  const chunks = manifest.chunks;
  /** The tensors with values in chunk `i`, for its errors. */
  const tensorsIn = (i: number): string[] => {
    const lo = starts[i];
    const hi = lo + chunks[i].bytes / 4;
    return manifest.tensors.filter((t) => {
      const n = t.shape.reduce((a, b) => a * b, 1);
      return n > 0 && t.offset < hi && t.offset + n > lo;
    }).map((t) => t.name);
  };
  /** The chunk holding element `e` of the stream (the last whose start is at most `e`). */
  const chunkAt = (e: number): number => {
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid] <= e) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };
  let cached: { index: number; bytes: Uint8Array } | null = null;
  let reads = 0;
  const tensors = new Map<string, TensorRows>();
  for (const t of manifest.tensors) {
    const cols = t.shape.slice(1).reduce((a, b) => a * b, 1);
    tensors.set(t.name, {
      shape: t.shape,
      dtype: "F32",
      rows: async (start, count) => {
        const rows = t.shape.length === 0 ? 1 : t.shape[0];
        if (
          !Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 ||
          start + count > rows
        ) {
          throw new StoredWeightsError(
            `rows ${start}..${start + count} of ${t.name} (it has ${rows})`,
            name,
            [t.name],
          );
        }
        const from = t.offset + start * cols;
        const end = t.offset + (start + count) * cols;
        const out = new Float32Array(end - from);
        for (let i = from < end ? chunkAt(from) : chunks.length; i < chunks.length; i++) {
          const lo = Math.max(from, starts[i]);
          const hi = Math.min(end, starts[i] + chunks[i].bytes / 4);
          if (lo >= hi) break;
          if (cached?.index !== i) {
            // Dropped before the next fetch, so that at most one chunk is held.
            cached = null;
            const c = chunks[i];
            reads++;
            cached = {
              index: i,
              bytes: await fetchChecked(store, c.name, c.digest, tensorsIn(i), options),
            };
            if (cached.bytes.byteLength !== c.bytes) {
              throw new StoredWeightsError(
                `chunk ${c.name} of the stored weights (${listed(tensorsIn(i))}) has ` +
                  `${cached.bytes.byteLength} bytes, the manifest says ${c.bytes}`,
                c.name,
                tensorsIn(i),
              );
            }
          }
          decodeChunkInto(cached.bytes, lo - starts[i], hi - lo, out, lo - from);
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
    chunkReads: () => reads,
  };
}

/** Tensor names for a message: all of a few, the first and last of many (the field has all). */
function listed(names: string[]): string {
  if (names.length <= 4) return names.join(", ");
  return `${names[0]}, … ${names[names.length - 1]}: ${names.length} tensors`;
}

/**
 * The bytes of `object`, which must have `digest` (waited for as a lagging replica's, up to the
 * window); a StoredWeightsError naming the object and `tensors` (empty: the manifest) otherwise.
 */
async function fetchChecked(
  store: ObjectStore,
  object: string,
  digest: string,
  tensors: string[],
  options: StreamStoredOptions,
): Promise<Uint8Array> {
  const what = tensors.length === 0
    ? "the manifest of the stored weights"
    : `chunk ${object} of the stored weights (${listed(tensors)})`;
  try {
    return await store.get(object, { digest, waitMs: options.waitMs });
  } catch (e) {
    throw new StoredWeightsError(
      `${what} cannot be read as the driver put it: ${(e as Error).message}`,
      object,
      tensors,
    );
  }
}

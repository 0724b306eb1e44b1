/**
 * W cut into bounded pieces for a transfer that must never hold all of it: each tensor's f32
 * values, in row-major order, as consecutive element ranges of at most a chunk's bytes, each as
 * little-endian bytes. The driver sends one chunk at a time and a worker reassembles the rows it
 * uploads from the chunks that cover them, so neither holds a serialized copy of W.
 * @module
 */

/**
 * The largest chunk of a tensor's bytes (64 MiB): a Llama-3.2-1B MLP matrix in f32 is one chunk,
 * and a chunk is far below a NATS object's practical size, while the per-object overhead (one
 * put, one digest) stays negligible against the bytes.
 */
export const STORE_CHUNK_BYTES = 64 * 1024 * 1024;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** One chunk of a tensor: its elements [start, start + count) in row-major order. */
export interface ElementRange {
  start: number;
  count: number;
}

/** The element ranges of a tensor of `elems` f32 values, each at most `chunkBytes`. */
export function chunkRanges(elems: number, chunkBytes: number): ElementRange[] {
  if (!Number.isInteger(chunkBytes) || chunkBytes < 4) {
    throw new RangeError(`chunk size ${chunkBytes} bytes: at least one f32 (4 bytes) expected`);
  }
  const per = Math.floor(chunkBytes / 4);
  const out: ElementRange[] = [];
  for (let s = 0; s < elems; s += per) out.push({ start: s, count: Math.min(per, elems - s) });
  // A tensor with no elements still gets one (empty) chunk, so that every tensor is stored.
  if (out.length === 0) out.push({ start: 0, count: 0 });
  return out;
}

/** The bytes of one chunk: a copy of `data[start, start + count)` as little-endian f32. */
export function encodeChunk(data: Float32Array, r: ElementRange): Uint8Array {
  if (LITTLE_ENDIAN) {
    return new Uint8Array(data.buffer, data.byteOffset + 4 * r.start, 4 * r.count).slice();
  }
  const out = new Uint8Array(4 * r.count);
  const v = new DataView(out.buffer);
  for (let i = 0; i < r.count; i++) v.setFloat32(4 * i, data[r.start + i], true);
  return out;
}

/**
 * Copies elements [from, from + n) of a chunk (its little-endian f32 `bytes`) into `out` at
 * `at`.
 */
export function decodeChunkInto(
  bytes: Uint8Array,
  from: number,
  n: number,
  out: Float32Array,
  at: number,
): void {
  if (LITTLE_ENDIAN) {
    new Uint8Array(out.buffer, out.byteOffset + 4 * at, 4 * n)
      .set(bytes.subarray(4 * from, 4 * (from + n)));
    return;
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < n; i++) out[at + i] = v.getFloat32(4 * (from + i), true);
}

/**
 * W cut into bounded pieces for a transfer that must never hold all of it: the tensors in model
 * order form one stream of little-endian f32 values, cut into chunks of at most a chunk's bytes.
 * Consecutive tensors share a chunk and a large tensor spans several, so the number of objects
 * follows W's bytes, not its tensor count (a test model is one chunk; the 1B shape, ~5 GB in f32,
 * 74). The driver builds and sends one chunk at a time; a worker keeps the chunk it is
 * reading and copies each tensor's rows out of the chunks that cover them, so neither holds a
 * serialized copy of W.
 * @module
 */

/**
 * The largest chunk (64 MiB): far below a NATS object's practical size, while the per-object
 * overhead (a put, a get, a digest; on a degraded replicated stream a get can take seconds) stays
 * negligible against the bytes.
 */
export const STORE_CHUNK_BYTES = 64 * 1024 * 1024;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A chunk's bytes for `chunkBytes`: whole f32 values, so that no value straddles two chunks. */
export function chunkCapacity(chunkBytes: number): number {
  if (!Number.isInteger(chunkBytes) || chunkBytes < 4) {
    throw new RangeError(`chunk size ${chunkBytes} bytes: at least one f32 (4 bytes) expected`);
  }
  return chunkBytes - (chunkBytes % 4);
}

/** The byte sizes of the chunks of a stream of `totalBytes`: full chunks, then the rest. */
export function chunkSizes(totalBytes: number, chunkBytes: number): number[] {
  const cap = chunkCapacity(chunkBytes);
  const out: number[] = [];
  for (let at = 0; at < totalBytes; at += cap) out.push(Math.min(cap, totalBytes - at));
  return out;
}

/**
 * The chunks of the stream of `tensors` (in the order given), built one at a time: each is a
 * fresh buffer of at most `chunkBytes`, built only when the caller asks for the next, so a caller
 * that is done with a chunk before asking again holds one.
 */
export function* packChunks(
  tensors: readonly Float32Array[],
  chunkBytes: number,
): Generator<Uint8Array> {
  const total = tensors.reduce((n, t) => n + 4 * t.length, 0);
  let t = 0; // the tensor being copied
  let e = 0; // its next element
  for (const size of chunkSizes(total, chunkBytes)) {
    const out = new Uint8Array(size);
    let at = 0;
    while (at < size) {
      const src = tensors[t];
      const n = Math.min(src.length - e, (size - at) / 4);
      encodeInto(src, e, n, out, at);
      at += 4 * n;
      e += n;
      if (e === src.length) {
        t++;
        e = 0;
      }
    }
    yield out;
  }
}

/** Writes `data[from, from + n)` as little-endian f32 into `out` at byte `at`. */
function encodeInto(data: Float32Array, from: number, n: number, out: Uint8Array, at: number) {
  if (LITTLE_ENDIAN) {
    out.set(new Uint8Array(data.buffer, data.byteOffset + 4 * from, 4 * n), at);
    return;
  }
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  for (let i = 0; i < n; i++) v.setFloat32(at + 4 * i, data[from + i], true);
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

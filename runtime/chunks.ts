/**
 * Chunking of frames larger than the server's `max_payload`, and their reassembly.
 *
 * Chunk layout (little-endian):
 *
 * ```
 *  0  u32  magic "ARC1"
 *  4  u32  chunk index
 *  8  u32  chunk count
 * 12  u32  total frame length (bytes)
 * 16  u32  chunk size (every chunk but the last is this long)
 * 20  u32  reserved (0)
 * 24  16 bytes transfer id (random, shared by the chunks of one frame)
 * 40  chunk bytes
 * ```
 *
 * NATS delivers one publisher's messages to one subscriber in order, but the reassembler does not
 * rely on it: each chunk lands at `index * chunkSize`, duplicates and inconsistent chunks are
 * rejected, and the rebuilt frame is checked again by {@link decodeFrame}'s checksums.
 * @module
 */
import { FrameError } from "./errors.ts";

/** Marks a chunk ("ARC1"). */
export const CHUNK_MAGIC = 0x31435241;
/** Bytes of a chunk's header. */
export const CHUNK_HEADER = 40;

/** True when `bytes` starts like a chunk. */
export function isChunk(bytes: Uint8Array): boolean {
  return bytes.byteLength >= 4 &&
    (bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) | (bytes[3] << 24)) === CHUNK_MAGIC;
}

/**
 * Splits a frame into chunks whose size (header included) is at most `maxPayload` bytes.
 * A frame that fits is returned as is, in a one-element list.
 */
export function splitFrame(frame: Uint8Array, maxPayload: number): Uint8Array[] {
  if (frame.byteLength <= maxPayload) return [frame];
  const size = maxPayload - CHUNK_HEADER;
  if (size < 1024) throw new RangeError(`max payload ${maxPayload} is too small to chunk`);
  if (frame.byteLength > 0xffffffff) throw new RangeError("frames above 4 GiB are not supported");
  const count = Math.ceil(frame.byteLength / size);
  const id = crypto.getRandomValues(new Uint8Array(16));
  const out: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    const part = frame.subarray(i * size, Math.min(frame.byteLength, (i + 1) * size));
    const c = new Uint8Array(CHUNK_HEADER + part.byteLength);
    const dv = new DataView(c.buffer);
    dv.setUint32(0, CHUNK_MAGIC, true);
    dv.setUint32(4, i, true);
    dv.setUint32(8, count, true);
    dv.setUint32(12, frame.byteLength, true);
    dv.setUint32(16, size, true);
    dv.setUint32(20, 0, true);
    c.set(id, 24);
    c.set(part, CHUNK_HEADER);
    out.push(c);
  }
  return out;
}

interface Transfer {
  buf: Uint8Array;
  count: number;
  size: number;
  seen: Uint8Array;
  received: number;
  touched: number;
}

/** Options of a {@link Reassembler}. */
export interface ReassemblerOptions {
  /** Largest frame accepted, in bytes (a bound on memory a sender can make us allocate). */
  maxFrameBytes?: number;
  /** A transfer without a new chunk for this long is dropped. */
  staleMs?: number;
}

/** Rebuilds frames from chunks, per transfer id. */
export class Reassembler {
  readonly #transfers = new Map<string, Transfer>();
  readonly #maxFrame: number;
  readonly #staleMs: number;

  constructor(options: ReassemblerOptions = {}) {
    this.#maxFrame = options.maxFrameBytes ?? 2 ** 32 - 1;
    this.#staleMs = options.staleMs ?? 60_000;
  }

  /** Transfers in progress. */
  get pending(): number {
    return this.#transfers.size;
  }

  /**
   * Accepts one chunk. Returns the whole frame when this chunk completes it, else undefined.
   * Throws {@link FrameError} on a malformed or inconsistent chunk (that transfer is dropped).
   */
  accept(chunk: Uint8Array): Uint8Array | undefined {
    if (chunk.byteLength < CHUNK_HEADER) {
      throw new FrameError(
        `chunk truncated: ${chunk.byteLength} bytes, header alone is ${CHUNK_HEADER}`,
      );
    }
    const dv = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (dv.getUint32(0, true) !== CHUNK_MAGIC) throw new FrameError("not a chunk (bad magic)");
    const index = dv.getUint32(4, true);
    const count = dv.getUint32(8, true);
    const total = dv.getUint32(12, true);
    const size = dv.getUint32(16, true);
    const key = hex(chunk.subarray(24, 40));
    const data = chunk.subarray(CHUNK_HEADER);
    const now = Date.now();
    this.#sweep(now);
    let t = this.#transfers.get(key);
    if (!t) {
      if (count < 2 || index >= count) {
        throw new FrameError(`chunk ${index} of ${count} is invalid`);
      }
      if (total > this.#maxFrame) {
        throw new FrameError(`frame of ${total} bytes exceeds the limit of ${this.#maxFrame}`);
      }
      if (size === 0 || Math.ceil(total / size) !== count) {
        throw new FrameError(`chunk sizes do not add up to ${total} bytes in ${count} chunks`);
      }
      t = {
        buf: new Uint8Array(total),
        count,
        size,
        seen: new Uint8Array(count),
        received: 0,
        touched: now,
      };
      this.#transfers.set(key, t);
    }
    try {
      if (count !== t.count || total !== t.buf.byteLength || size !== t.size || index >= count) {
        throw new FrameError(`chunk ${index}/${count} disagrees with its transfer`);
      }
      const expected = index < count - 1 ? t.size : total - t.size * (count - 1);
      if (data.byteLength !== expected || expected <= 0) {
        throw new FrameError(`chunk ${index} has ${data.byteLength} bytes, expected ${expected}`);
      }
      if (t.seen[index]) throw new FrameError(`chunk ${index} received twice`);
    } catch (e) {
      this.#transfers.delete(key);
      throw e;
    }
    t.buf.set(data, index * t.size);
    t.seen[index] = 1;
    t.received++;
    t.touched = now;
    if (t.received < t.count) return undefined;
    this.#transfers.delete(key);
    return t.buf;
  }

  /** Drops every transfer in progress. */
  clear() {
    this.#transfers.clear();
  }

  #sweep(now: number) {
    if (this.#transfers.size === 0) return;
    for (const [k, t] of this.#transfers) {
      if (now - t.touched > this.#staleMs) this.#transfers.delete(k);
    }
  }
}

function hex(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i++) s += b[i].toString(16).padStart(2, "0");
  return s;
}

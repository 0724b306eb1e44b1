/**
 * Frames larger than the server's `max_payload` travel as parts, and are reassembled.
 *
 * Each part is one NATS message whose payload is a slice of the frame and whose NATS header
 * `Actors-Part` says where it goes: `<transfer id> <index> <count> <offset> <length> <total>`.
 * Slices are taken straight from the frame's pieces (its header, then each tensor's own bytes),
 * so a big tensor is never copied into an intermediate buffer on the sending side; padding
 * between tensors is not sent (the receiver's buffer starts zeroed). The receiver places each
 * part at its offset, refuses duplicates, overlaps past the end and inconsistent parts, and
 * completes only when every part is there; the rebuilt frame is then checked again by
 * {@link decodeFrame}'s checksums.
 * @module
 */
import type { FramePlan } from "./codec.ts";
import { FrameError } from "./errors.ts";

/** NATS header carrying a part's placement. */
export const PART_HEADER = "Actors-Part";

/** Where one part of a frame goes. */
export interface PartInfo {
  /** Random id shared by the parts of one frame. */
  id: string;
  index: number;
  count: number;
  /** Byte offset of this part in the frame. */
  offset: number;
  /** Byte length of this part. */
  length: number;
  /** Byte length of the whole frame. */
  total: number;
}

/** One message of a split frame. */
export interface Part {
  info: PartInfo;
  bytes: Uint8Array;
}

/** Formats a part's header value. */
export function formatPart(p: PartInfo): string {
  return `${p.id} ${p.index} ${p.count} ${p.offset} ${p.length} ${p.total}`;
}

/** Parses a part's header value; throws FrameError when malformed. */
export function parsePart(s: string): PartInfo {
  const f = s.split(" ");
  const n = f.slice(1).map(Number);
  if (
    f.length !== 6 || !/^[0-9a-f]{8,64}$/.test(f[0]) ||
    !n.every((x) => Number.isSafeInteger(x) && x >= 0)
  ) {
    throw new FrameError(`malformed part header: ${s.slice(0, 100)}`);
  }
  const [index, count, offset, length, total] = n;
  return { id: f[0], index, count, offset, length, total };
}

function newId(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(12)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

/**
 * Splits a planned frame into parts of at most `maxPart` bytes, as views of the frame's own
 * pieces (no copy). Returns undefined when the frame fits in one message.
 */
export function splitPlan(plan: FramePlan, maxPart: number): Part[] | undefined {
  if (plan.length <= maxPart) return undefined;
  if (maxPart < 1024) throw new RangeError(`part size ${maxPart} is too small`);
  const slices: { bytes: Uint8Array; at: number }[] = [];
  plan.write((bytes, at) => {
    for (let o = 0; o < bytes.byteLength; o += maxPart) {
      slices.push({
        bytes: bytes.subarray(o, Math.min(bytes.byteLength, o + maxPart)),
        at: at + o,
      });
    }
  });
  const id = newId();
  return slices.map((s, index) => ({
    info: {
      id,
      index,
      count: slices.length,
      offset: s.at,
      length: s.bytes.byteLength,
      total: plan.length,
    },
    bytes: s.bytes,
  }));
}

/** Splits an already encoded frame into parts (views, no copy). */
export function splitFrame(frame: Uint8Array, maxPart: number): Part[] {
  return splitPlan({ length: frame.byteLength, write: (put) => put(frame, 0) }, maxPart) ?? [{
    info: {
      id: newId(),
      index: 0,
      count: 1,
      offset: 0,
      length: frame.byteLength,
      total: frame.byteLength,
    },
    bytes: frame,
  }];
}

interface Transfer {
  buf: Uint8Array;
  count: number;
  seen: Uint8Array;
  received: number;
  touched: number;
}

/** Options of a {@link Reassembler}. */
export interface ReassemblerOptions {
  /** Largest frame accepted, in bytes (a bound on memory a sender can make us allocate). */
  maxFrameBytes?: number;
  /** A transfer without a new part for this long is dropped. */
  staleMs?: number;
  /** Most transfers in progress at once (older ones are dropped first). */
  maxTransfers?: number;
  /** Most bytes of transfers in progress at once (older ones are dropped first). */
  maxPendingBytes?: number;
}

/** Rebuilds frames from parts, per transfer id. */
export class Reassembler {
  readonly #transfers = new Map<string, Transfer>();
  readonly #maxFrame: number;
  readonly #staleMs: number;
  readonly #maxTransfers: number;
  readonly #maxPending: number;
  #pendingBytes = 0;

  constructor(options: ReassemblerOptions = {}) {
    this.#maxFrame = options.maxFrameBytes ?? 2 ** 32 - 1;
    this.#staleMs = options.staleMs ?? 60_000;
    this.#maxTransfers = options.maxTransfers ?? 64;
    this.#maxPending = options.maxPendingBytes ?? Infinity;
  }

  /** Bytes held by transfers in progress. */
  get pendingBytes(): number {
    return this.#pendingBytes;
  }

  #drop(id: string) {
    const t = this.#transfers.get(id);
    if (!t) return;
    this.#transfers.delete(id);
    this.#pendingBytes -= t.buf.byteLength;
  }

  /** Transfers in progress. */
  get pending(): number {
    return this.#transfers.size;
  }

  /** Whether a transfer is in progress. */
  has(id: string): boolean {
    return this.#transfers.has(id);
  }

  /** The buffer a transfer is being rebuilt in (parts already placed are in it). */
  buffer(id: string): Uint8Array | undefined {
    return this.#transfers.get(id)?.buf;
  }

  /**
   * Accepts one part. Returns the whole frame when this part completes it, else undefined.
   * Throws {@link FrameError} on a malformed or inconsistent part (that transfer is dropped).
   */
  accept(info: PartInfo, data: Uint8Array): Uint8Array | undefined {
    const now = Date.now();
    this.#sweep(now);
    const { id, index, count, offset, length, total } = info;
    let t = this.#transfers.get(id);
    if (!t) {
      if (count < 1 || index >= count) throw new FrameError(`part ${index} of ${count} is invalid`);
      if (total > this.#maxFrame) {
        throw new FrameError(`frame of ${total} bytes exceeds the limit of ${this.#maxFrame}`);
      }
      while (
        this.#transfers.size > 0 &&
        (this.#transfers.size >= this.#maxTransfers ||
          this.#pendingBytes + total > this.#maxPending)
      ) {
        this.#drop(this.#transfers.keys().next().value!);
      }
      this.#pendingBytes += total;
      t = {
        buf: new Uint8Array(total),
        count,
        seen: new Uint8Array(count),
        received: 0,
        touched: now,
      };
      this.#transfers.set(id, t);
    }
    try {
      if (count !== t.count || total !== t.buf.byteLength || index >= count) {
        throw new FrameError(`part ${index}/${count} disagrees with its transfer`);
      }
      if (data.byteLength !== length) {
        throw new FrameError(
          `part ${index} has ${data.byteLength} bytes, its header says ${length} (truncated)`,
        );
      }
      if (offset + length > total) {
        throw new FrameError(`part ${index} ends past the frame's ${total} bytes`);
      }
      if (t.seen[index]) throw new FrameError(`part ${index} received twice`);
    } catch (e) {
      this.#drop(id);
      throw e;
    }
    t.buf.set(data, offset);
    t.seen[index] = 1;
    t.received++;
    t.touched = now;
    if (t.received < t.count) return undefined;
    this.#drop(id);
    return t.buf;
  }

  /** Drops every transfer in progress. */
  clear() {
    this.#transfers.clear();
    this.#pendingBytes = 0;
  }

  #sweep(now: number) {
    if (this.#transfers.size === 0) return;
    for (const [k, t] of this.#transfers) {
      if (now - t.touched > this.#staleMs) this.#drop(k);
    }
  }
}

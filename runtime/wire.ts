/**
 * Sending and receiving frames over NATS subjects; big frames travel as parts.
 *
 * `send` encodes a value and publishes it as one frame, or as parts when it exceeds the
 * connection's `max_payload`; `FrameInbox` turns what arrives on a subscription (frames and
 * parts) back into decoded frames. Calls, replies, control messages and collectives all use it.
 *
 * A big tensor is published from its own memory (NATS copies it into its output buffer on the
 * next microtask): do not modify a tensor passed to a call or broadcast until it has resolved.
 * @module
 */
import { headers, type Msg, type NatsConnection } from "@nats-io/nats-core";
import {
  formatPart,
  parsePart,
  type Part,
  PART_HEADER,
  Reassembler,
  splitFrame,
  splitPlan,
} from "./chunks.ts";
import { Checksum32 } from "./checksum.ts";
import {
  type Decoded,
  decodeFrame,
  isFrame,
  type Meta,
  planFrame,
  tensorLayout,
  writeFrame,
} from "./codec.ts";
import { FrameError } from "./errors.ts";

/** Bytes per message: the server's max_payload, less room for NATS' own framing and headers. */
export function chunkLimit(nc: NatsConnection): number {
  const max = nc.info?.max_payload ?? 1024 * 1024;
  return Math.max(64 * 1024, max - 1024);
}

/** After this many bytes of parts, wait for the server, so the client's buffer stays bounded. */
const FLUSH_EVERY = 64 * 1024 * 1024;

/** What {@link encode} made: one frame, or parts. */
export interface Encoded {
  frame?: Uint8Array;
  parts?: Part[];
  /** Size of the whole frame in bytes. */
  bytes: number;
}

/** Encodes a value for this connection: one frame when it fits, parts otherwise. */
export function encode(nc: NatsConnection, meta: Meta, value: unknown): Encoded {
  const plan = planFrame(meta, value);
  const parts = splitPlan(plan, chunkLimit(nc));
  if (parts) return { parts, bytes: plan.length };
  return { frame: writeFrame(plan), bytes: plan.length };
}

/** Publishes what {@link encode} made. Resolves once every part is handed to the client. */
export function publish(
  nc: NatsConnection,
  subject: string,
  e: Encoded,
  reply?: string,
): Promise<number> {
  if (e.frame) {
    nc.publish(subject, e.frame, reply ? { reply } : undefined);
    return Promise.resolve(e.bytes);
  }
  return publishParts(nc, subject, e.parts!, e.bytes, reply);
}

async function publishParts(
  nc: NatsConnection,
  subject: string,
  parts: Part[],
  bytes: number,
  reply?: string,
): Promise<number> {
  let sinceFlush = 0;
  for (const p of parts) {
    const h = headers();
    h.set(PART_HEADER, formatPart(p.info));
    nc.publish(subject, p.bytes, reply ? { reply, headers: h } : { headers: h });
    sinceFlush += p.bytes.byteLength;
    if (sinceFlush >= FLUSH_EVERY) {
      sinceFlush = 0;
      await nc.flush();
    }
  }
  return bytes;
}

/** Publishes an already encoded frame (as parts when it is too big). */
export function publishFrame(
  nc: NatsConnection,
  subject: string,
  frame: Uint8Array,
  reply?: string,
): Promise<number> {
  if (frame.byteLength <= chunkLimit(nc)) {
    return publish(nc, subject, { frame, bytes: frame.byteLength }, reply);
  }
  return publishParts(nc, subject, splitFrame(frame, chunkLimit(nc)), frame.byteLength, reply);
}

/** Encodes and publishes. Returns the frame's size in bytes. */
export function send(
  nc: NatsConnection,
  subject: string,
  meta: Meta,
  value: unknown,
  reply?: string,
): Promise<number> {
  return publish(nc, subject, encode(nc, meta, value), reply);
}

/** A message that arrived as a whole frame. */
export interface Incoming extends Decoded {
  subject: string;
  reply?: string;
  /** Size of the frame in bytes. */
  bytes: number;
}

interface TensorCheck {
  offset: number;
  length: number;
  checksum: number;
  sum: Checksum32;
  /** Bytes of this tensor hashed so far (in order). */
  done: number;
  /** A part came out of order: leave this tensor to the check after reassembly. */
  skip: boolean;
}

/**
 * Checks the tensors of one frame while its parts arrive in order, so that little is left to do
 * once the last part is in; anything out of order is simply checked after reassembly.
 */
class PartVerifier {
  #tensors?: TensorCheck[];
  #headEnd = 0;
  #lost = false;

  /** Takes note of a part just placed at `offset` in `buf`. */
  part(buf: Uint8Array, offset: number, length: number) {
    if (this.#lost) return;
    if (!this.#tensors) {
      if (offset !== 0) {
        this.#lost = true; // the head came late: its layout is unknown until reassembly
        return;
      }
      try {
        const layout = tensorLayout(buf.subarray(0, length));
        if (!layout) {
          this.#lost = true;
          return;
        }
        this.#tensors = layout.map((t) => ({ ...t, sum: new Checksum32(), done: 0, skip: false }));
        this.#headEnd = length;
      } catch {
        this.#lost = true; // decodeFrame will report what is wrong
      }
      return;
    }
    const end = offset + length;
    if (offset < this.#headEnd) {
      this.#lost = true; // the head was written again: trust nothing checked against it
      return;
    }
    // Bytes already hashed must never change afterwards: any part touching a tensor other than
    // as its next in-order slice sends that tensor to the full check.
    for (const t of this.#tensors) {
      if (end <= t.offset || offset >= t.offset + t.length || t.skip) continue;
      if (offset === t.offset + t.done && end <= t.offset + t.length) {
        t.sum.update(buf.subarray(offset, end));
        t.done += length;
      } else {
        t.skip = true;
      }
    }
  }

  /** Indexes of the tensors verified in full. */
  verified(): Set<number> {
    const ok = new Set<number>();
    if (this.#lost) return ok;
    this.#tensors?.forEach((t, i) => {
      if (!t.skip && t.done === t.length && t.sum.digest() === t.checksum) ok.add(i);
    });
    return ok;
  }
}

/** Reassembles and decodes what arrives on one subscription. */
export class FrameInbox {
  readonly #reassembler: Reassembler;
  readonly #verifiers = new Map<string, PartVerifier>();
  readonly #maxFrameBytes: number;

  /**
   * `maxFrameBytes` bounds one frame; `maxPendingBytes` bounds the frames being reassembled at
   * once (oldest dropped first), so that a sender cannot make this inbox hold more.
   */
  constructor(maxFrameBytes?: number, maxPendingBytes?: number) {
    this.#maxFrameBytes = maxFrameBytes ?? Infinity;
    this.#reassembler = new Reassembler({ maxFrameBytes, maxPendingBytes });
  }

  /**
   * Takes one NATS message. Returns the decoded frame when complete, undefined while parts are
   * still missing; throws FrameError for anything malformed.
   */
  accept(msg: Msg): Incoming | undefined {
    const partHeader = msg.headers?.get(PART_HEADER);
    let frame: Uint8Array | undefined;
    let verified: Set<number> | undefined;
    if (partHeader) {
      const info = parsePart(partHeader);
      try {
        frame = this.#reassembler.accept(info, msg.data);
      } catch (e) {
        this.#verifiers.delete(info.id);
        throw e;
      }
      let v = this.#verifiers.get(info.id);
      if (!v) {
        // Transfers the reassembler dropped (stale, evicted) leave no verifier behind.
        for (const id of this.#verifiers.keys()) {
          if (!this.#reassembler.has(id)) this.#verifiers.delete(id);
        }
        v = new PartVerifier();
        this.#verifiers.set(info.id, v);
      }
      const buf = frame ?? this.#reassembler.buffer(info.id);
      if (buf) v.part(buf, info.offset, info.length);
      if (frame) {
        verified = v.verified();
        this.#verifiers.delete(info.id);
      }
    } else if (msg.data.byteLength > this.#maxFrameBytes) {
      throw new FrameError(
        `message on ${msg.subject} has ${msg.data.byteLength} bytes, over the limit of ` +
          `${this.#maxFrameBytes}`,
      );
    } else if (isFrame(msg.data)) {
      frame = msg.data;
    } else {
      throw new FrameError(`message on ${msg.subject} is not a frame`);
    }
    if (!frame) return undefined;
    const d = decodeFrame(frame, verified);
    return { ...d, subject: msg.subject, reply: msg.reply || undefined, bytes: frame.byteLength };
  }

  /** Transfers still being reassembled. */
  get pending(): number {
    return this.#reassembler.pending;
  }

  clear() {
    this.#reassembler.clear();
    this.#verifiers.clear();
  }
}

/** True when a message is the server's "no responders" status for a request. */
export function isNoResponders(msg: Msg): boolean {
  return msg.data.byteLength === 0 && msg.headers?.code === 503;
}

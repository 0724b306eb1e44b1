/**
 * Sending and receiving frames over NATS subjects, with chunking for big ones.
 *
 * `publishFrame` splits a frame above the connection's `max_payload` into chunks; `FrameInbox`
 * turns a stream of messages (frames and chunks) back into decoded frames. Both ends are used by
 * calls, replies, control messages and collectives alike.
 * @module
 */
import type { Msg, NatsConnection } from "@nats-io/nats-core";
import { isChunk, Reassembler, splitFrame } from "./chunks.ts";
import { type Decoded, decodeFrame, encodeFrame, isFrame, type Meta } from "./codec.ts";
import { FrameError } from "./errors.ts";

/** Bytes per chunk: the server's max_payload, less room for NATS' own framing. */
export function chunkLimit(nc: NatsConnection): number {
  const max = nc.info?.max_payload ?? 1024 * 1024;
  return Math.max(64 * 1024, max - 1024);
}

/** Frames above this many bytes are published with a flush between slices, to bound memory. */
const FLUSH_EVERY = 64 * 1024 * 1024;

/**
 * Publishes one frame (chunked when needed). Returns the frame's size in bytes. Big frames yield
 * to the socket between slices so the client's outbound buffer stays bounded.
 */
export async function publishFrame(
  nc: NatsConnection,
  subject: string,
  frame: Uint8Array,
  reply?: string,
): Promise<number> {
  const limit = chunkLimit(nc);
  if (frame.byteLength <= limit) {
    nc.publish(subject, frame, reply ? { reply } : undefined);
    return frame.byteLength;
  }
  let sinceFlush = 0;
  for (const c of splitFrame(frame, limit)) {
    nc.publish(subject, c, reply ? { reply } : undefined);
    sinceFlush += c.byteLength;
    if (sinceFlush >= FLUSH_EVERY) {
      sinceFlush = 0;
      await nc.flush();
    }
  }
  return frame.byteLength;
}

/** Encodes and publishes. */
export function send(
  nc: NatsConnection,
  subject: string,
  meta: Meta,
  value: unknown,
  reply?: string,
): Promise<number> {
  return publishFrame(nc, subject, encodeFrame(meta, value), reply);
}

/** A message that arrived as a whole frame. */
export interface Incoming extends Decoded {
  subject: string;
  reply?: string;
  /** Size of the frame in bytes. */
  bytes: number;
}

/** Reassembles and decodes what arrives on one subscription. */
export class FrameInbox {
  readonly #reassembler: Reassembler;

  constructor(maxFrameBytes?: number) {
    this.#reassembler = new Reassembler({ maxFrameBytes });
  }

  /**
   * Takes one NATS message. Returns the decoded frame when complete, undefined while chunks are
   * still missing; throws FrameError for anything malformed.
   */
  accept(msg: Msg): Incoming | undefined {
    const data = msg.data;
    let frame: Uint8Array | undefined;
    if (isFrame(data)) frame = data;
    else if (isChunk(data)) frame = this.#reassembler.accept(data);
    else throw new FrameError(`message on ${msg.subject} is neither a frame nor a chunk`);
    if (!frame) return undefined;
    const d = decodeFrame(frame);
    return { ...d, subject: msg.subject, reply: msg.reply || undefined, bytes: frame.byteLength };
  }

  /** Transfers still being reassembled. */
  get pending(): number {
    return this.#reassembler.pending;
  }

  clear() {
    this.#reassembler.clear();
  }
}

/** True when a message is the server's "no responders" status for a request. */
export function isNoResponders(msg: Msg): boolean {
  return msg.data.byteLength === 0 && msg.headers?.code === 503;
}

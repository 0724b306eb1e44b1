/**
 * Digests that tie a step's payloads to the calls that announce them.
 *
 * Contributions and updates travel on subjects anyone with the system's credentials can publish
 * on; the step reply (worker → driver) and the apply call (driver → worker) go over the
 * runtime's private request/reply path. Each of those names its payload by SHA-256, so a message
 * on the open subject is taken only if its bytes are the ones announced: a forged, stale or
 * damaged payload can neither win a race against the real one nor be mistaken for it.
 * @module
 */
import { createHash } from "node:crypto";

/** SHA-256 (hex) of a tensor's bytes. */
export function tensorDigest(t: Float32Array): string {
  return createHash("sha256").update(new Uint8Array(t.buffer, t.byteOffset, t.byteLength))
    .digest("hex");
}

/** Bytes of slack over a tensor's own bytes for its frame's header (names, shape, JSON). */
export const FRAME_SLACK = 64 * 1024;

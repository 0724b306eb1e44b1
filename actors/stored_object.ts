/**
 * Objects that a message names together with their digest (the driver's factors and a
 * checkpoint's states for a worker's init, worker 0's export for a re-synchronisation): read only
 * as the bytes their putter announced.
 *
 * The digest lets the read wait out a replica that has not caught up yet (runtime/objects.ts,
 * `get(name, { digest })`): on a cluster the server a worker asks may answer "not found", or the
 * previous version, for an object another host put a moment ago. Once that window has passed the
 * failure is a StoredObjectError naming the object, which crosses the actor boundary as itself.
 * @module
 */
import { z } from "zod";
import { DomainError } from "../core/errors.ts";
import { type ObjectStore, ObjectStoreError } from "../runtime/mod.ts";
import type { ObjectRef } from "./messages.ts";

/** An object a message names could not be read as its putter announced it (missing or other bytes). */
export class StoredObjectError extends DomainError {
  static override readonly code: string = "STORED_OBJECT";
  static readonly fields: z.ZodObject = z.object({ object: z.string(), digest: z.string() });
  /** The object-store name the message gave. */
  readonly object: string;
  /** The digest the message gave (`SHA-256=<base64url>`). */
  readonly digest: string;
  constructor(message: string, object: string, digest: string, options?: ErrorOptions) {
    super(message, options);
    this.object = object;
    this.digest = digest;
  }
}

/**
 * The bytes of `ref` (what a message named), waiting up to `waitMs` (default: the store's
 * election window) for a lagging replica; `what` says what the object is, for the error.
 */
export async function getAnnounced(
  store: ObjectStore,
  ref: z.infer<typeof ObjectRef>,
  what: string,
  waitMs?: number,
): Promise<Uint8Array> {
  try {
    return await store.get(ref.name, { digest: ref.digest, waitMs });
  } catch (e) {
    if (!(e instanceof ObjectStoreError)) throw e;
    throw new StoredObjectError(
      `${what} ${ref.name} cannot be read as it was put: ${e.message}`,
      ref.name,
      ref.digest,
      { cause: e },
    );
  }
}

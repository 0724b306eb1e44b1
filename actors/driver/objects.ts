/**
 * Objects the workers put into the store for the driver (checkpoint parts, re-sync sources, the
 * final weights): taken only with the digest the worker reported, so that a stale worker of an
 * older generation, or anybody else with the system's credentials, cannot slip bytes in.
 * @module
 */
import type { ObjectStore } from "../../runtime/mod.ts";
import { objectDigest } from "../digest.ts";
import { TrainingError } from "./context.ts";

/** An object as a worker reports it. */
export interface Reported {
  name: string;
  digest: string;
}

/**
 * The bytes of `e`, which must have the digest its worker reported; otherwise a TrainingError
 * with `changed(name)` as its message.
 */
export async function readReported(
  store: ObjectStore,
  e: Reported,
  changed: (name: string) => string,
): Promise<Uint8Array> {
  const bytes = await store.get(e.name);
  if (objectDigest(bytes) !== e.digest) throw new TrainingError(changed(e.name));
  return bytes;
}

/**
 * {@link readReported}, then the object is deleted (a refused one too, as far as the store
 * lets it: the first error is the one reported).
 */
export async function takeReported(
  store: ObjectStore,
  e: Reported,
  changed: (name: string) => string,
): Promise<Uint8Array> {
  let bytes: Uint8Array;
  try {
    bytes = await readReported(store, e, changed);
  } catch (err) {
    await store.delete(e.name).catch(() => {});
    throw err;
  }
  await store.delete(e.name);
  return bytes;
}

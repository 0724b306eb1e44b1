/**
 * Objects the workers put into the store for the driver (checkpoint parts, re-sync sources, the
 * final weights): taken only with the digest the worker reported, so that a stale worker of an
 * older generation, or anybody else with the system's credentials, cannot slip bytes in.
 * @module
 */
import { type ObjectStore, ObjectStoreError } from "../../runtime/mod.ts";
import { TrainingError } from "./context.ts";

/** An object as a worker reports it. */
export interface Reported {
  name: string;
  digest: string;
}

/**
 * The bytes of `e`, which must have the digest its worker reported. The get waits for them for
 * the store's election window (a replica behind the worker's put answers late); then an object
 * there under another digest is a TrainingError with `changed(name)` as its message, a missing
 * one the store's ObjectStoreError.
 */
export async function readReported(
  store: ObjectStore,
  e: Reported,
  changed: (name: string) => string,
): Promise<Uint8Array> {
  try {
    return await store.get(e.name, { digest: e.digest });
  } catch (err) {
    if (!(err instanceof ObjectStoreError)) throw err;
    const now = await store.info(e.name);
    if (now && now.digest !== e.digest) throw new TrainingError(changed(e.name), { cause: err });
    throw err;
  }
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

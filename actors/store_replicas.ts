/**
 * The replicas of a system's object store (the JetStream bucket that carries the base weights,
 * the re-syncs and the checkpoints) when the job joins a cluster with `--nats`.
 *
 * The runtime opens the bucket with one replica, which puts it on one server: losing that
 * server loses the weights the workers load and the checkpoints a rollback needs. On a cluster of
 * three or more JetStream servers the job creates it with three replicas first (the runtime then
 * finds it and uses it as it is), so the run survives the loss of any one server.
 * @module
 */
import { JetStreamApiError, jetstreamManager } from "@nats-io/jetstream";
import { ObjectStore, type System } from "../runtime/mod.ts";
import { throughElections } from "../runtime/objects.ts";

/** JetStream's error code for "insufficient resources" (fewer servers than replicas). */
const INSUFFICIENT_RESOURCES = 10023;
/** JetStream's "stream not found": the bucket does not exist yet. */
const STREAM_NOT_FOUND = 10059;

/** The JetStream error code of `e` or of one of its causes (ObjectStoreError wraps it). */
function errCode(e: unknown): number | undefined {
  for (let c: unknown = e; c instanceof Error; c = c.cause) {
    if (c instanceof JetStreamApiError) return c.code;
  }
  return undefined;
}

/**
 * Creates (or scales up) the object store of `system` with `wanted` replicas; `"auto"` asks for 3
 * on a clustered server and settles for 1, saying so, when the cluster has fewer JetStream
 * servers. An explicit count that the cluster cannot hold is an error (ObjectStoreError).
 * Returns the replicas the bucket has.
 */
export async function replicateObjectStore(
  system: System,
  wanted: number | "auto",
  log: (line: string) => void,
): Promise<number> {
  const bucket = `actors_${system.name}`;
  const stream = `OBJ_${bucket}`;
  const clustered = system.nc.info?.cluster !== undefined;
  const target = wanted === "auto" ? (clustered ? 3 : 1) : wanted;
  // A job may start while the cluster elects leaders (a server just died): wait that out.
  const jsm = await throughElections(() => jetstreamManager(system.nc));
  const existing = await throughElections(() => jsm.streams.info(stream)).catch((e) => {
    if (errCode(e) === STREAM_NOT_FOUND) return null;
    throw e;
  });
  if (existing) {
    const have = existing.config.num_replicas ?? 1;
    if (have >= target) return have;
    try {
      // A stream's replicas can be raised in place; its objects are copied to the new peers.
      await throughElections(() =>
        jsm.streams.update(stream, { ...existing.config, num_replicas: target })
      );
      log(`object store ${bucket}: ${have} → ${target} replicas`);
      return target;
    } catch (e) {
      if (wanted !== "auto" || errCode(e) !== INSUFFICIENT_RESOURCES) throw e;
      log(`object store ${bucket}: kept ${have} replica(s); the cluster has too few servers for 3`);
      return have;
    }
  }
  try {
    await ObjectStore.open(system.nc, bucket, { replicas: target });
  } catch (e) {
    if (wanted !== "auto" || target === 1 || errCode(e) !== INSUFFICIENT_RESOURCES) throw e;
    log(`object store ${bucket}: 1 replica; the cluster has fewer than 3 JetStream servers`);
    await ObjectStore.open(system.nc, bucket, { replicas: 1 });
    return 1;
  }
  if (target > 1) log(`object store ${bucket}: ${target} replicas`);
  return target;
}

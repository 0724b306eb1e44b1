/**
 * Heartbeats made by hand for the directory tests (runtime/directory.ts without processes): a
 * node's beat with the fields the directory does not vary in these tests fixed.
 */
import type { ActorInfo, Heartbeat } from "../../runtime/protocol.ts";

/** Node `node`'s heartbeat `seq` at directory revision `rev`, listing `actors`. */
export function hb(
  node: string,
  actors: ActorInfo[],
  rev: number,
  seq: number,
  extra: Partial<Heartbeat> = {},
): Heartbeat {
  return {
    node,
    pid: 1,
    host: "h",
    interval: 500,
    missed: 3,
    resources: {},
    used: {},
    placeable: true,
    rev,
    seq,
    actors,
    ...extra,
  };
}

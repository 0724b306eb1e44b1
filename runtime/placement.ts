/**
 * Choosing a node for an actor by the resources it asks for.
 * @module
 */
import type { NodeEntry } from "./directory.ts";
import type { Resources } from "./protocol.ts";

/** How to choose. */
export interface PlacementRequest {
  resources: Resources;
  /** This process's own node: used only when pinned, or when no other node fits. */
  self: string;
  /** A node id, or "local" for this process. */
  pinned?: string;
  /** Nodes that just refused (e.g. resources taken meanwhile). */
  exclude?: ReadonlySet<string>;
  /** Reservations this process has in flight, per node, not yet in heartbeats. */
  inflight?: ReadonlyMap<string, Resources>;
  /** Actors on a node as this process knows them (fresher than the node's last heartbeat). */
  load?: (node: string) => number;
}

/** Free amount of each resource on a node, as its last heartbeat and our in-flight spawns say. */
export function freeOf(n: NodeEntry, inflight?: Resources): Resources {
  const free: Resources = {};
  for (const [k, v] of Object.entries(n.hb.resources)) {
    free[k] = v - (n.hb.used[k] ?? 0) - (inflight?.[k] ?? 0);
  }
  return free;
}

function fits(free: Resources, want: Resources): boolean {
  return Object.entries(want).every(([k, v]) => v <= 0 || (free[k] ?? 0) >= v);
}

/**
 * Picks the node for an actor: among placeable nodes whose free resources fit, the one hosting
 * the fewest actors (spreading load); this process's own node only when pinned to it, when it is
 * the only node that fits, or when it is marked placeable. Returns undefined when none fits.
 */
export function pickNode(
  nodes: ReadonlyMap<string, NodeEntry>,
  req: PlacementRequest,
): string | undefined {
  if (req.pinned) {
    const id = req.pinned === "local" ? req.self : req.pinned;
    const n = nodes.get(id);
    if (!n) return undefined;
    return fits(freeOf(n, req.inflight?.get(id)), req.resources) ? id : undefined;
  }
  let best: string | undefined;
  let bestLoad = Infinity;
  for (const [id, n] of nodes) {
    if (id === req.self || !n.hb.placeable || req.exclude?.has(id)) continue;
    if (!fits(freeOf(n, req.inflight?.get(id)), req.resources)) continue;
    const load = req.load ? req.load(id) : n.hb.actors.length;
    if (load < bestLoad) {
      best = id;
      bestLoad = load;
    }
  }
  if (best) return best;
  const own = nodes.get(req.self);
  if (
    own && !req.exclude?.has(req.self) &&
    fits(freeOf(own, req.inflight?.get(req.self)), req.resources)
  ) {
    return req.self;
  }
  return undefined;
}

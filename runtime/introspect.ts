/**
 * What a process can tell about its system from what travels on NATS: the live nodes, the actors
 * and their states (from heartbeats and lifecycle events), how busy each actor is (mailbox depth
 * and calls per second, from the counters heartbeats carry), and the system's events as JSON
 * records. Every process builds the same picture from the same messages, so one that only joined
 * the system by URL sees what the process that started it sees (docs/architecture.md §5).
 * @module
 */
import { z } from "zod";
import type { ActorEntry, NodeEntry } from "./directory.ts";
import { type ActorLoad, type AppEvent, type Heartbeat, resourcesSchema } from "./protocol.ts";
import type { SystemEvent } from "./system.ts";

/** A node as {@link System.introspect} reports it. */
export const nodeSnapshotSchema = z.object({
  id: z.string(),
  host: z.string(),
  pid: z.number().int(),
  resources: resourcesSchema,
  used: resourcesSchema,
  /** False for a process that hosts actors only when asked by node id. */
  placeable: z.boolean(),
  /** Actors it hosts, by its last heartbeat. */
  actors: z.number().int().nonnegative(),
  /** Time since its last heartbeat arrived here. */
  heartbeatAgeMs: z.number().nonnegative(),
  /** Its heartbeat period. */
  heartbeatMs: z.number().positive(),
  /** Reconnections of its connection. */
  reconnects: z.number().int().nonnegative(),
  /** True for the process that took the snapshot. */
  self: z.boolean(),
});
export type NodeSnapshot = z.infer<typeof nodeSnapshotSchema>;

export const ACTOR_STATES = ["up", "down", "restarting", "gone"] as const;

/** An actor as {@link System.introspect} reports it. */
export const actorSnapshotSchema = z.object({
  id: z.string(),
  name: z.string().optional(),
  type: z.string(),
  /** The node hosting it (for an actor not up: the one that hosted it last). */
  node: z.string(),
  /** The process that spawned it and supervises it. */
  owner: z.string(),
  /** Its incarnation: how many times it has been restarted. */
  inc: z.number().int().nonnegative(),
  state: z.enum(ACTOR_STATES),
  /** When its state last changed to down, restarting or gone (ms since the epoch). */
  since: z.number().nullable(),
  /** Why it went down or away. */
  reason: z.string().nullable(),
  detail: z.string().nullable(),
  resources: resourcesSchema,
  /** Calls waiting in its mailbox; null while not up, or when its node does not say. */
  queued: z.number().int().nonnegative().nullable(),
  /** Whether a call is running; null as for `queued`. */
  busy: z.boolean().nullable(),
  /** Calls this incarnation has run; null as for `queued`. */
  calls: z.number().int().nonnegative().nullable(),
  /** Calls run per second over the last few seconds; null until two heartbeats tell. */
  callsPerSec: z.number().nonnegative().nullable(),
});
export type ActorSnapshot = z.infer<typeof actorSnapshotSchema>;

/** What {@link System.introspect} returns. */
export const systemSnapshotSchema = z.object({
  /** The system's name. */
  system: z.string(),
  /** The node id of the process that took the snapshot. */
  node: z.string(),
  /** When it was taken (ms since the epoch). */
  time: z.number(),
  nodes: z.array(nodeSnapshotSchema),
  actors: z.array(actorSnapshotSchema),
});
/** A process's view of its system: nodes and actors. */
export type SystemSnapshot = z.infer<typeof systemSnapshotSchema>;

export const EVENT_TYPES = [
  "node_up",
  "node_down",
  "node_reconnected",
  "node_replaced",
  "actor_up",
  "actor_down",
  "actor_restarting",
  "actor_gone",
  "supervisor_failed",
  "app",
] as const;

/** One event of the system as JSON: what {@link eventRecord} makes of a `SystemEvent`. */
export const eventRecordSchema = z.object({
  /** When this process learned of it (ms since the epoch); the sender's time for `app`. */
  time: z.number(),
  type: z.enum(EVENT_TYPES),
  /** The node concerned: joined, left, reconnected, replaced; the sender of an `app` event. */
  node: z.string().optional(),
  /** The actor concerned. */
  actor: z.object({
    id: z.string(),
    name: z.string().optional(),
    type: z.string(),
    inc: z.number().int().nonnegative(),
    node: z.string(),
  }).optional(),
  /** Why an actor went down or away. */
  reason: z.string().optional(),
  detail: z.string().optional(),
  /** `actor_down`: it was stopped on purpose and will not restart. */
  final: z.boolean().optional(),
  /** `node_replaced`: the node that took its place. */
  replacement: z.string().optional(),
  /** `supervisor_failed`: the supervisor. */
  supervisor: z.string().optional(),
  /** `app`: the id of the actor that published it, when an actor did. */
  source: z.string().optional(),
  /** `app`: the event's name, e.g. `train.step`. */
  kind: z.string().optional(),
  /** `app`: the sender's count of its events. */
  seq: z.number().int().nonnegative().optional(),
  /** `app`: what the sender attached. */
  data: z.unknown().optional(),
});
export type EventRecord = z.infer<typeof eventRecordSchema>;

function actorOf(a: { id: string; name?: string; type: string; inc: number; node: string }) {
  return {
    id: a.id,
    ...(a.name !== undefined ? { name: a.name } : {}),
    type: a.type,
    inc: a.inc,
    node: a.node,
  };
}

/** A system event as a JSON record (for logs, streams and pages). */
export function eventRecord(e: SystemEvent, now = Date.now()): EventRecord {
  switch (e.type) {
    case "node_up":
    case "node_down":
    case "node_reconnected":
      return { time: now, type: e.type, node: e.node };
    case "node_replaced":
      return { time: now, type: e.type, node: e.node, replacement: e.replacement };
    case "actor_up":
    case "actor_restarting":
      return { time: now, type: e.type, actor: actorOf(e.actor) };
    case "actor_down":
      return {
        time: now,
        type: e.type,
        actor: actorOf(e.actor),
        reason: e.reason,
        final: e.final,
        ...(e.detail !== undefined ? { detail: e.detail } : {}),
      };
    case "actor_gone":
      return {
        time: now,
        type: e.type,
        actor: actorOf(e.actor),
        reason: e.reason,
        ...(e.detail !== undefined ? { detail: e.detail } : {}),
      };
    case "supervisor_failed":
      return {
        time: now,
        type: e.type,
        supervisor: e.supervisor,
        detail: e.error.message,
      };
    case "app":
      return appRecord(e.event);
  }
}

function appRecord(ev: AppEvent): EventRecord {
  return {
    time: ev.time,
    type: "app",
    node: ev.node,
    ...(ev.actor !== undefined ? { source: ev.actor } : {}),
    kind: ev.kind,
    seq: ev.seq,
    data: ev.data,
  };
}

/** How far back calls per second look. */
const RATE_WINDOW_MS = 5000;

interface Sample {
  t: number;
  inc: number;
  calls: number;
}

/**
 * Calls per second of each actor, from the call counters of successive heartbeats (as they
 * arrive here), over the last few seconds. A new incarnation starts over.
 */
export class LoadTracker {
  readonly #samples = new Map<string, Sample[]>();

  /** Takes the counters of a heartbeat. */
  note(hb: Heartbeat, now = Date.now()) {
    for (const [id, l] of Object.entries(hb.load ?? {})) {
      let s = this.#samples.get(id);
      if (!s || s[s.length - 1].inc !== l.inc) this.#samples.set(id, s = []);
      s.push({ t: now, inc: l.inc, calls: l.calls });
      // Keep the newest sample older than the window as the base of the rate.
      while (s.length > 2 && now - s[1].t >= RATE_WINDOW_MS) s.shift();
    }
    for (const [id, s] of this.#samples) {
      if (now - s[s.length - 1].t > 6 * RATE_WINDOW_MS) this.#samples.delete(id);
    }
  }

  /** Calls per second of incarnation `inc` of actor `id`, or null when unknown. */
  rate(id: string, inc: number): number | null {
    const s = this.#samples.get(id);
    if (!s || s.length < 2 || s[0].inc !== inc) return null;
    const a = s[0], b = s[s.length - 1];
    const dt = b.t - a.t;
    return dt > 0 ? Math.max(0, ((b.calls - a.calls) * 1000) / dt) : null;
  }
}

/** The snapshot of a process's directory (see {@link System.introspect}). */
export function buildSnapshot(
  o: {
    system: string;
    self: string;
    nodes: ReadonlyMap<string, NodeEntry>;
    actors: ReadonlyMap<string, ActorEntry>;
    tracker: LoadTracker;
  },
  now = Date.now(),
): SystemSnapshot {
  const nodes: NodeSnapshot[] = [...o.nodes.values()].map(({ hb, lastSeen }) => ({
    id: hb.node,
    host: hb.host,
    pid: hb.pid,
    resources: { ...hb.resources },
    used: { ...hb.used },
    placeable: hb.placeable,
    actors: hb.actors.length,
    heartbeatAgeMs: Math.max(0, now - lastSeen),
    heartbeatMs: hb.interval,
    reconnects: hb.conn ?? 0,
    self: hb.node === o.self,
  }));
  const actors: ActorSnapshot[] = [...o.actors.values()].map((e) => {
    const info = e.info;
    const load: ActorLoad | undefined = e.state === "up"
      ? o.nodes.get(info.node)?.hb.load?.[info.id]
      : undefined;
    const current = load !== undefined && load.inc === info.inc ? load : undefined;
    return {
      id: info.id,
      ...(info.name !== undefined ? { name: info.name } : {}),
      type: info.type,
      node: info.node,
      owner: info.owner,
      inc: info.inc,
      state: e.state,
      since: e.since ?? null,
      reason: e.reason ?? null,
      detail: e.detail ?? null,
      resources: { ...info.resources },
      queued: current?.queued ?? null,
      busy: current?.busy ?? null,
      calls: current?.calls ?? null,
      callsPerSec: current ? o.tracker.rate(info.id, info.inc) : null,
    };
  });
  nodes.sort((a, b) => a.id.localeCompare(b.id));
  actors.sort((a, b) => a.id.localeCompare(b.id));
  return { system: o.system, node: o.self, time: now, nodes, actors };
}

/**
 * Subjects and control messages of the runtime's own protocol.
 *
 * Everything of one system lives under `actors.<system>.`: the runtime's subjects under `rt.`,
 * the application's (collectives, job subjects) under `app.`. Two systems on one server never
 * see each other's messages. Control messages are validated with zod like any other message, so
 * a malformed one from a rogue client is dropped rather than trusted.
 * @module
 */
import { z } from "zod";
import { InvalidArgumentError } from "./errors.ts";

const TOKEN = /^[A-Za-z0-9_-]{1,128}$/;

/** Checks a name used as a subject token (system, actor and node names). */
export function checkToken(kind: string, name: string): string {
  if (typeof name !== "string" || !TOKEN.test(name)) {
    throw new InvalidArgumentError(
      `${kind} name ${JSON.stringify(name)} is invalid: use 1-128 of A-Z a-z 0-9 _ -`,
    );
  }
  return name;
}

/** The subjects of one system. */
export class Subjects {
  /** `actors.<system>` */
  readonly root: string;
  /** Prefix for application subjects: `actors.<system>.app`. */
  readonly app: string;
  /** Heartbeats of every node: `<root>.rt.hb.*`. */
  readonly heartbeats: string;
  /** Actor lifecycle events of every node: `<root>.rt.ev.*`. */
  readonly events: string;
  /** Application events of every node: `<root>.rt.ae.*`. */
  readonly appEvents: string;

  constructor(readonly system: string) {
    checkToken("system", system);
    this.root = `actors.${system}`;
    this.app = `${this.root}.app`;
    this.heartbeats = `${this.root}.rt.hb.*`;
    this.events = `${this.root}.rt.ev.*`;
    this.appEvents = `${this.root}.rt.ae.*`;
  }

  /**
   * Where a node publishes the lifecycle events it is the source of (the actors it hosts, the
   * restarts it supervises): receivers check an event's claims against the node it came from.
   */
  event(node: string): string {
    return `${this.root}.rt.ev.${node}`;
  }

  /**
   * Where a node publishes the application events of the actors it hosts (and of its own code):
   * like lifecycle events, a receiver takes the node an event names only from its subject.
   */
  appEvent(node: string): string {
    return `${this.root}.rt.ae.${node}`;
  }

  /** The node a heartbeat or event subject belongs to. */
  nodeOf(subject: string): string {
    return subject.slice(subject.lastIndexOf(".") + 1);
  }

  /** Where a node publishes its heartbeat. */
  heartbeat(node: string): string {
    return `${this.root}.rt.hb.${node}`;
  }

  /** A node's control endpoint (spawn, stop, kill). */
  control(node: string): string {
    return `${this.root}.rt.node.${node}`;
  }

  /** An actor's call endpoint; stable across restarts, so handles survive them. */
  actor(id: string): string {
    return `${this.root}.rt.a.${id}`;
  }
}

/** Named amounts of resources, e.g. `{ gpu: 1 }`. */
export type Resources = Record<string, number>;

export const resourcesSchema = z.record(z.string(), z.number().nonnegative());

/** What a system knows about a running actor. */
export const actorInfoSchema = z.object({
  id: z.string(),
  name: z.string().optional(),
  type: z.string(),
  module: z.string().optional(),
  /** Incarnation: bumped by every (re)start. */
  inc: z.number().int().nonnegative(),
  node: z.string(),
  /** Node (process) that spawned it and supervises it. */
  owner: z.string(),
  resources: resourcesSchema,
  /**
   * Its mailbox's capacity (absent from older nodes): a caller never has more of its calls out
   * to it than fit, plus the running one (runtime/flow.ts).
   */
  mailbox: z.number().int().positive().optional(),
  /**
   * Its node's revision right after this incarnation came up (absent from older nodes): only a
   * heartbeat at this revision or later can tell of its end by not listing it.
   */
  rev: z.number().int().nonnegative().optional(),
});
/** What a system knows about a running actor. */
export type ActorInfo = z.infer<typeof actorInfoSchema>;

/** How busy a hosted actor is, as its node's heartbeat reports it. */
export const actorLoadSchema = z.object({
  /** Its incarnation (the counters start over with each). */
  inc: z.number().int().nonnegative(),
  /** Calls waiting in its mailbox (not counting the running one). */
  queued: z.number().int().nonnegative(),
  /** Whether a call is running. */
  busy: z.boolean(),
  /** Calls this incarnation has run (answered or failed) since it started. */
  calls: z.number().int().nonnegative(),
});
/** How busy a hosted actor is. */
export type ActorLoad = z.infer<typeof actorLoadSchema>;

const deathReason = z.enum(["node", "stopped", "killed", "owner", "init", "budget", "shutdown"]);

const endedSchema = z.object({
  id: z.string(),
  inc: z.number().int().nonnegative(),
  reason: deathReason,
  /** Stopped on purpose: not to be restarted. */
  final: z.boolean(),
});
/** An actor that ended on a node, as its heartbeat lists it for a while. */
export type EndedActor = z.infer<typeof endedSchema>;

export const heartbeatSchema = z.object({
  node: z.string(),
  pid: z.number(),
  host: z.string(),
  /** The sender's heartbeat period and how many may be missed before it counts as dead. */
  interval: z.number().positive(),
  missed: z.number().int().positive(),
  resources: resourcesSchema,
  used: resourcesSchema,
  /** False for a process that hosts actors only when asked by node id. */
  placeable: z.boolean(),
  /** Revision of the hosted-actor set; events carry it too. */
  rev: z.number().int().nonnegative(),
  /** Reconnections of the sender's main connection: messages to it may have been lost. */
  conn: z.number().int().nonnegative().optional(),
  seq: z.number().int().nonnegative(),
  actors: z.array(actorInfoSchema),
  /** Mailbox and call counters of the hosted actors, by id (absent from older nodes). */
  load: z.record(z.string(), actorLoadSchema).optional(),
  /**
   * Actors that ended here lately, and how: a receiver that sees an actor gone from the list
   * before its "down" event (which travels on another connection) still learns why.
   */
  ended: z.array(endedSchema).optional(),
});
/** One node's heartbeat. */
export type Heartbeat = z.infer<typeof heartbeatSchema>;

export const eventSchema = z.discriminatedUnion("e", [
  z.object({ e: z.literal("up"), actor: actorInfoSchema, rev: z.number() }),
  z.object({
    e: z.literal("down"),
    id: z.string(),
    inc: z.number(),
    node: z.string(),
    reason: deathReason,
    /** Final: the instance was stopped on purpose and must not be restarted. */
    final: z.boolean(),
    rev: z.number(),
    detail: z.string().optional(),
  }),
  z.object({ e: z.literal("restarting"), id: z.string(), inc: z.number(), owner: z.string() }),
  z.object({
    e: z.literal("gone"),
    id: z.string(),
    inc: z.number(),
    reason: deathReason,
    detail: z.string().optional(),
  }),
]);
/** An actor lifecycle event published on {@link Subjects.events}. */
export type ActorEvent = z.infer<typeof eventSchema>;

/** The name of an application event: e.g. `train.step`. */
export const APP_EVENT_KIND = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;

/** An application event (`System.emit`, `ctx.emit`), published on {@link Subjects.appEvent}. */
export const appEventSchema = z.object({
  kind: z.string().max(128).regex(APP_EVENT_KIND),
  /** The process that published it (checked against the subject it came on). */
  node: z.string(),
  /** The actor that published it, when an actor did (`ctx.emit`). */
  actor: z.string().optional(),
  /** Sender's clock, ms since the epoch. */
  time: z.number(),
  /** Per sender, counting from 0: a gap means events were lost. */
  seq: z.number().int().nonnegative(),
  data: z.unknown(),
});
/** An application event. */
export type AppEvent = z.infer<typeof appEventSchema>;

export const spawnRequestSchema = z.object({
  id: z.string(),
  name: z.string().optional(),
  type: z.string(),
  module: z.string().optional(),
  /** Digest of the module bundle to load `type` from (instead of `module`'s URL). */
  bundle: z.string().regex(/^sha256:[0-9a-f]{64}$/).optional(),
  inc: z.number().int().nonnegative(),
  owner: z.string(),
  resources: resourcesSchema,
  mailbox: z.number().int().positive(),
  initTimeoutMs: z.number().positive(),
  input: z.unknown(),
});
/** Asks a node to start an actor instance. */
export type SpawnRequest = z.infer<typeof spawnRequestSchema>;

export const stopRequestSchema = z.object({
  id: z.string(),
  /** "stop": graceful, final. "kill": immediate, may be restarted by its supervisor. */
  mode: z.enum(["stop", "kill"]),
  graceMs: z.number().nonnegative(),
});
/** Asks a node to stop or kill an actor instance. */
export type StopRequest = z.infer<typeof stopRequestSchema>;

/** Formats zod issues in one line. */
export function issuesOf(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.length ? i.path.join(".") : "(root)"}: ${i.message}`)
    .join("; ");
}

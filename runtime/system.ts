/**
 * The actor system: `init()`, spawning, lookup, calls, supervision, shutdown.
 *
 * Every process of a system (the one that called `init()`, every node process) runs one
 * `System`: a NATS connection, a directory fed by heartbeats and events, a caller, and a host
 * for the actors placed on it. There is no central coordinator: an actor's supervisor lives in
 * the process that spawned it, and every process detects dead nodes by itself.
 * @module
 */
import type { z } from "zod";
import type { ConnectionOptions, NatsConnection, Subscription } from "@nats-io/nats-core";
import {
  type ActorContext,
  type ActorHandle,
  type ActorRef,
  type AnyActorDef,
  type CallOptions,
  type InitInput,
  isActorDef,
  type MethodSpec,
  type Schema,
} from "./actor.ts";
import { Caller, type TrafficStats } from "./caller.ts";
import { Collectives } from "./collectives.ts";
import { connectNats, type Credentials, splitUrlCredentials } from "./connect.ts";
import { Directory, type DirectoryEvent } from "./directory.ts";
import {
  ActorExistsError,
  ActorNotFoundError,
  ActorTypeMismatchError,
  BundleError,
  CallCancelledError,
  InsufficientResourcesError,
  InvalidArgumentError,
  NodeStartError,
  NoNodeAvailableError,
  SchemaError,
  type SupervisorFailedError,
  SystemClosedError,
} from "./errors.ts";
import { HeartbeatPublisher } from "./heartbeat.ts";
import { Host } from "./host.ts";
import { buildSnapshot, LoadTracker, type SystemSnapshot } from "./introspect.ts";
import { defaultNodeConfig, LocalNode, type NodeSpec } from "./local_nodes.ts";
import {
  bundledActor,
  bundleModule,
  bundleObjectName,
  checkDigest,
  type ShippedModule,
} from "./bundles.ts";
import { ModuleLoader, PROJECT_ROOT } from "./modules.ts";
import { EmbeddedServer, type EmbeddedServerOptions } from "./nats_server.ts";
import { ObjectStore } from "./objects.ts";
import { pickNode } from "./placement.ts";
import {
  type ActorEvent,
  type ActorInfo,
  actorInfoSchema,
  APP_EVENT_KIND,
  type AppEvent,
  appEventSchema,
  checkToken,
  eventSchema,
  type Heartbeat,
  heartbeatSchema,
  issuesOf,
  type Resources,
  type SpawnRequest,
  Subjects,
} from "./protocol.ts";
import {
  ActorChild,
  type Budget,
  type ChildOptions,
  DEFAULT_BUDGET,
  type Strategy,
  type SupervisionEnv,
  SupervisorNode,
} from "./supervisor.ts";

/** Options of {@link init}. */
export interface InitOptions extends Credentials {
  /**
   * URL(s) of an existing NATS server or cluster (`nats://` or `ws://`). Without it a private
   * nats-server is started (JetStream on, free loopback ports, generated credentials).
   */
  nats?: string | string[];
  /** Name of the system; processes with the same name on one server form one system. Default "default". */
  system?: string;
  /** Local node processes to start: a count (each with `nodeResources`) or one spec per node. */
  nodes?: number | NodeSpec[];
  /** Resources of each node when `nodes` is a count, e.g. `{ gpu: 1 }`. */
  nodeResources?: Resources;
  /** Resources this process's own node advertises (it hosts actors too). Default none. */
  resources?: Resources;
  /**
   * Whether actors without a `node` option may be placed on this process. Default false: this
   * process hosts an actor only when asked (`node: "local"`) or when no other node fits.
   */
  placeable?: boolean;
  /** Module URL prefixes (or local folders) actor types may be loaded from, besides this project. */
  allowModules?: string[];
  /**
   * Digests (`sha256:<hex>`) of module bundles this process and its local node processes may
   * import (see {@link System.shipModule}; `bundleModule(url)` gives a digest before `init`).
   */
  allowBundles?: string[];
  /** A folder to keep unpacked module bundles in across runs. Default a private temp folder. */
  bundleCache?: string;
  /** Heartbeat period. Default 500 ms. */
  heartbeatMs?: number;
  /** Heartbeats missed before a node counts as dead. Default 3. */
  missedHeartbeats?: number;
  /**
   * How long the actors hosted here outlive their owner's silence once it counts as dead, before
   * they are stopped (reason `owner`). A partition that heals within it costs them nothing: the
   * owner either still has them, or restarts them, and a restart placed here takes the old
   * instance's place and resources. Default 10 000 ms.
   */
  ownerGraceMs?: number;
  /**
   * Settings of the embedded server; `transport: "ws"` makes this system use its WebSocket port.
   * `nodeIdentities`: how many node users it is made with (each local node process, replacements
   * included, connects as one of them, with the permissions of a node); default
   * max(32, 8 × nodes); `false` lets nodes use this process's credentials.
   */
  server?: Omit<EmbeddedServerOptions, "nodeUsers"> & {
    transport?: "tcp" | "ws";
    nodeIdentities?: number | false;
  };
  /** Further nats.js options for this process's connection (not passed to node processes). */
  connection?: Partial<ConnectionOptions>;
  /** How long to wait for the local node processes to join. Default 60 s. */
  nodeStartTimeoutMs?: number;
  /**
   * The Deno configuration file (`deno.json`) local node processes run with; they import the
   * actor modules, so it must resolve their imports. Default: the one that applies to this
   * program's main module (the nearest in its folder or above), else this project's.
   */
  nodeConfig?: string;
  /** Largest message accepted (bounds what a sender can make a receiver allocate). Default 1 GiB. */
  maxFrameBytes?: number;
  /** This process's node id (node processes get theirs from their owner). Default random. */
  nodeId?: string;
  /**
   * Replace a local node process that dies (it exits, or misses its heartbeats) with a fresh one
   * of the same spec, so that its actors can restart on this host. `true` allows as many
   * replacements per minute as there are local nodes (at least 2). Default off.
   */
  replaceNodes?: boolean | ReplaceBudget;
}

/** How many local node processes may be replaced within a window. */
export interface ReplaceBudget {
  max: number;
  withinMs: number;
}

/** Options of {@link System.spawn}. */
export interface SpawnOptions extends ChildOptions {
  /** A unique name: the actor can then be looked up with {@link System.getActor} from any process. */
  name?: string;
  /** Resources the actor needs, e.g. `{ gpu: 1 }`; it is placed on a node that has them free. */
  resources?: Resources;
  /** A node id, or "local" for this process. */
  node?: string;
  /** Restarts allowed within `withinMs` after the actor dies. Default 3. */
  maxRestarts?: number;
  /** Window of the restart budget. Default 60 000 ms. */
  withinMs?: number;
  /** Mailbox capacity. Default 1024. */
  mailbox?: number;
  /** Time the constructor may take. Default 120 000 ms. */
  initTimeoutMs?: number;
  /** How long to wait for a node with the resources. Default 10 000 ms. */
  placementTimeoutMs?: number;
}

/** A child of a supervisor: an actor. */
export interface ActorChildSpec<D extends AnyActorDef = AnyActorDef> {
  readonly kind: "actor";
  readonly def: D;
  readonly input: InitInput<D>;
  readonly options: ChildOptions;
}

/** A supervisor (possibly nested). */
export interface SupervisorSpec<C extends ChildSpecs = ChildSpecs> {
  readonly kind: "supervisor";
  strategy: Strategy;
  /** Default 3. */
  maxRestarts?: number;
  /** Default 60 000 ms. */
  withinMs?: number;
  children: C;
}

/** Children of a supervisor, by key. */
export type ChildSpecs = { [key: string]: ActorChildSpec | SupervisorSpec };

/** An actor child for {@link System.supervise}. */
export function child<D extends AnyActorDef>(
  def: D,
  input: InitInput<D>,
  options: ChildOptions = {},
): ActorChildSpec<D> {
  return { kind: "actor", def, input, options };
}

/** A nested supervisor for {@link System.supervise}. */
export function supervisor<C extends ChildSpecs>(
  spec: Omit<SupervisorSpec<C>, "kind">,
): SupervisorSpec<C> {
  return { kind: "supervisor", ...spec };
}

/** Handles of a supervisor's children, typed by its spec. */
export type SupervisedChildren<C extends ChildSpecs> = {
  readonly [K in keyof C]: C[K] extends ActorChildSpec<infer D> ? ActorHandle<D>
    : C[K] extends SupervisorSpec<infer C2> ? Supervisor<C2>
    : never;
};

/** A running supervision tree. */
export interface Supervisor<C extends ChildSpecs> {
  readonly children: SupervisedChildren<C>;
  /** Resolves (never rejects) if this top-level supervisor gives up. */
  readonly failed: Promise<SupervisorFailedError>;
  /** Stops supervising and stops every actor below. */
  stop(): Promise<void>;
}

/** A node as seen from this process. */
export interface NodeInfo {
  id: string;
  host: string;
  pid: number;
  resources: Resources;
  used: Resources;
  placeable: boolean;
  actors: number;
}

/** Events a system reports to {@link System.on} listeners. */
export type SystemEvent = DirectoryEvent | {
  type: "supervisor_failed";
  supervisor: string;
  error: SupervisorFailedError;
} | {
  /** A local node process died and a fresh one took its place. */
  type: "node_replaced";
  node: string;
  replacement: string;
} | {
  /** An application event, published by any process of the system (`emit`, `ctx.emit`). */
  type: "app";
  event: AppEvent;
};

/** Largest application event, as JSON. */
export const MAX_APP_EVENT_BYTES = 1024 * 1024;

const DEFAULT_MAILBOX = 1024;
const DEFAULT_INIT_TIMEOUT = 120_000;
const DEFAULT_PLACEMENT_TIMEOUT = 10_000;

function randomId(prefix: string): string {
  const b = crypto.getRandomValues(new Uint8Array(5));
  return prefix + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

interface JoinOptions {
  servers: string[];
  credentials: Credentials;
  connection?: Partial<ConnectionOptions>;
  system: string;
  nodeId: string;
  resources: Resources;
  placeable: boolean;
  allowModules: string[];
  allowBundles?: string[];
  bundleCache?: string;
  heartbeatMs: number;
  missedHeartbeats: number;
  ownerGraceMs: number;
  maxFrameBytes: number;
  replaceNodes?: boolean | ReplaceBudget;
  nodeConfig?: string;
}

/**
 * Starts (no `nats` URL) or joins (with one) a system, and starts `nodes` local node processes.
 *
 * ```ts
 * const system = await init({ nodes: 2, nodeResources: { gpu: 1 } });
 * const w = await system.spawn(Worker, { k: 0 }, { resources: { gpu: 1 } });
 * await system.shutdown();
 * ```
 */
export async function init(options: InitOptions = {}): Promise<System> {
  const systemName = options.system ?? "default";
  checkToken("system", systemName);
  for (const d of options.allowBundles ?? []) checkDigest(d, "allowed bundle digest");
  let server: EmbeddedServer | undefined;
  let servers: string[];
  let credentials: Credentials;
  const nodeId = options.nodeId ?? randomId("p");
  if (options.nats === undefined) {
    const asked = typeof options.nodes === "number" ? options.nodes : options.nodes?.length ?? 0;
    const pool = options.server?.nodeIdentities ?? Math.max(32, 8 * asked);
    server = await EmbeddedServer.start({
      ...options.server,
      nodeUsers: pool === false ? undefined : {
        system: systemName,
        ids: Array.from({ length: pool }, (_, i) => `${nodeId}-${i}`),
      },
    });
    if (options.server?.transport === "ws") {
      if (!server.wsUrl) {
        throw new InvalidArgumentError("server.transport is ws but websocket is off");
      }
      servers = [server.wsUrl];
    } else {
      servers = [server.url];
    }
    credentials = { ...server.credentials };
  } else {
    const split = splitUrlCredentials(
      Array.isArray(options.nats) ? options.nats : options.nats.split(","),
      {
        user: options.user,
        pass: options.pass,
        token: options.token,
        credsFile: options.credsFile,
        nkeySeed: options.nkeySeed,
        tls: options.tls,
      },
    );
    servers = split.servers;
    credentials = split.credentials;
  }
  let system: System | undefined;
  try {
    system = await System.join({
      servers,
      credentials,
      connection: options.connection,
      system: systemName,
      nodeId,
      resources: options.resources ?? {},
      placeable: options.placeable ?? false,
      allowModules: options.allowModules ?? [],
      allowBundles: options.allowBundles ?? [],
      bundleCache: options.bundleCache,
      heartbeatMs: options.heartbeatMs ?? 500,
      missedHeartbeats: options.missedHeartbeats ?? 3,
      ownerGraceMs: options.ownerGraceMs ?? 10_000,
      maxFrameBytes: options.maxFrameBytes ?? 1024 * 1024 * 1024,
      replaceNodes: options.replaceNodes,
      nodeConfig: options.nodeConfig,
    }, server);
    const nodes = options.nodes ?? 0;
    const specs: NodeSpec[] = typeof nodes === "number"
      ? Array.from({ length: nodes }, () => ({ resources: options.nodeResources }))
      : nodes;
    if (specs.length > 0) await system.addNodes(specs, options.nodeStartTimeoutMs);
    return system;
  } catch (e) {
    if (system) await system.shutdown();
    else await server?.stop();
    throw e;
  }
}

/** One process's view of, and part in, an actor system. */
export class System {
  /** The system's name. */
  readonly name: string;
  /** Prefix for application subjects (`<namespace>.step.<t>...`), private to this system. */
  readonly namespace: string;
  /** This process's node id. */
  readonly nodeId: string;
  /** The NATS connection of this process. */
  readonly nc: NatsConnection;
  /** The server URLs this system uses. */
  readonly servers: readonly string[];
  /** Collectives (gather, broadcast, all-gather) on this connection. */
  readonly collectives: Collectives;
  /** The embedded server, when this process started one. */
  readonly server?: EmbeddedServer;

  readonly #opts: JoinOptions;
  readonly #subjects: Subjects;
  readonly #dir = new Directory();
  readonly #caller: Caller;
  readonly #host: Host;
  readonly #loader: ModuleLoader;
  readonly #owned = new Map<string, ActorChild>();
  readonly #roots = new Set<SupervisorNode>();
  readonly #failures = new Map<SupervisorNode, (e: SupervisorFailedError) => void>();
  readonly #inflight = new Map<string, Resources>();
  readonly #listeners = new Set<(e: SystemEvent) => void>();
  readonly #nodes: LocalNode[] = [];
  /** Specs of the live local nodes, by id (a replacement gets the same spec). */
  readonly #specs = new Map<string, NodeSpec>();
  readonly #replaced: number[] = [];
  /** Owners taken for dead whose actors here wait out the owner grace: their pid, the timer. */
  readonly #orphans = new Map<string, { pid: number; timer: ReturnType<typeof setTimeout> }>();
  readonly #subs: Subscription[] = [];
  readonly #rates = new LoadTracker();
  #heartbeat?: HeartbeatPublisher;
  #tick?: ReturnType<typeof setInterval>;
  #refresh?: ReturnType<typeof setInterval>;
  #appSeq = 0;
  #objects?: Promise<ObjectStore>;
  #closing?: Promise<void>;
  /** Reconnections of this process's connection (advertised in its heartbeat). */
  #conn = 0;

  private constructor(nc: NatsConnection, opts: JoinOptions, server?: EmbeddedServer) {
    this.nc = nc;
    this.#opts = opts;
    this.server = server;
    this.name = opts.system;
    this.nodeId = opts.nodeId;
    this.servers = opts.servers;
    this.#subjects = new Subjects(opts.system);
    this.namespace = this.#subjects.app;
    this.#loader = new ModuleLoader([PROJECT_ROOT, ...opts.allowModules], {
      allow: opts.allowBundles ?? [],
      node: opts.nodeId,
      cacheDir: opts.bundleCache,
      fetch: async (digest) => {
        try {
          return await (await this.objects()).get(bundleObjectName(digest));
        } catch (e) {
          throw new BundleError(`cannot fetch module bundle ${digest}: ${(e as Error).message}`, {
            cause: e,
          });
        }
      },
    });
    const inbox = opts.credentials.inboxPrefix;
    this.#caller = new Caller(nc, this.#subjects, this.#dir, opts.maxFrameBytes, inbox);
    this.collectives = new Collectives(nc, opts.maxFrameBytes, this.#caller.stats, inbox);
    this.#host = new Host({
      nc,
      subjects: this.#subjects,
      node: opts.nodeId,
      resources: opts.resources,
      loader: this.#loader,
      maxFrameBytes: opts.maxFrameBytes,
      deadlines: this.#caller.deadlines,
      stats: this.#caller.stats,
      context: (info, stopped) => this.#context(info, stopped),
      changed: () => this.#heartbeat?.update(this.#payload()),
    });
  }

  /**
   * Joins a system over an already running server. `init()` and node processes use it; programs
   * should call `init()`.
   */
  static async join(opts: JoinOptions, server?: EmbeddedServer): Promise<System> {
    checkToken("node", opts.nodeId);
    for (const d of opts.allowBundles ?? []) checkDigest(d, "allowed bundle digest");
    const nc = await connectNats(opts.servers, {
      ...opts.credentials,
      name: `${opts.system}-${opts.nodeId}`,
      extra: opts.connection,
    });
    const system = new System(nc, opts, server);
    try {
      await system.#start();
    } catch (e) {
      await system.shutdown();
      throw e;
    }
    return system;
  }

  /** Takes the JSON messages on a per-node subject that `schema` accepts and that name that node. */
  #onNodeSubject<S extends z.ZodType<{ node: string }>>(
    subject: string,
    schema: S,
    take: (value: z.output<S>) => void,
  ): void {
    this.#subs.push(this.nc.subscribe(subject, {
      callback: (err, msg) => {
        if (!err) this.#takeNodeMessage(msg.subject, msg.string(), schema, take);
      },
    }));
  }

  /** Takes one JSON message of a per-node subject if `schema` accepts it and it names that node. */
  #takeNodeMessage<S extends z.ZodType<{ node: string }>>(
    subject: string,
    text: string,
    schema: S,
    take: (value: z.output<S>) => void,
  ): void {
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      return;
    }
    const v = schema.safeParse(raw);
    if (v.success && v.data.node === this.#subjects.nodeOf(subject)) take(v.data);
  }

  async #start() {
    const s = this.#subjects;
    // Heartbeats and application events speak only for the node whose subject they came on
    // (which only that node may publish to, where the server gives each node its own user).
    // Heartbeats arrive on the heartbeat thread's connection (runtime/heartbeat_worker.ts), so
    // that a backlog of replies on this one cannot hold them back.
    const onHeartbeat = (hb: Heartbeat) => {
      this.#dir.heartbeat(hb);
      this.#rates.note(hb);
    };
    this.#onNodeSubject(s.appEvents, appEventSchema, (event) => this.#tell({ type: "app", event }));
    this.#subs.push(this.nc.subscribe(s.events, {
      callback: (err, msg) => {
        if (err) return;
        let raw: unknown;
        try {
          raw = msg.json();
        } catch {
          return;
        }
        const ev = eventSchema.safeParse(raw);
        if (ev.success && this.#speaksFor(s.nodeOf(msg.subject), ev.data)) this.#dir.event(ev.data);
      },
    }));
    this.#dir.on((e) => this.#onDirectory(e));
    this.#watchConnection();
    this.#caller.start();
    this.#host.start();
    await this.nc.flush();
    const payload = this.#payload();
    this.#dir.heartbeat({ ...payload, seq: 0 });
    this.#heartbeat = await HeartbeatPublisher.start(
      [...this.servers],
      { ...this.#opts.credentials, name: `${this.name}-${this.nodeId}` },
      s.heartbeat(this.nodeId),
      this.#opts.heartbeatMs,
      this.#opts.heartbeatMs * this.#opts.missedHeartbeats,
      payload,
      () => this.#frozen(),
      {
        subject: s.heartbeats,
        onHeard: (subject, text) =>
          this.#takeNodeMessage(subject, text, heartbeatSchema, onHeartbeat),
      },
    );
    const period = Math.max(20, Math.floor(this.#opts.heartbeatMs / 2));
    this.#tick = setInterval(() => this.#dir.tick(Date.now(), period), period);
    // Mailbox depths and call counts change all the time: they go out with the next beat.
    this.#refresh = setInterval(
      () => this.#heartbeat?.update(this.#payload(), true),
      this.#opts.heartbeatMs,
    );
  }

  #tell(e: SystemEvent) {
    for (const l of [...this.#listeners]) {
      try {
        l(e);
      } catch (err) {
        console.error("system event listener failed:", err);
      }
    }
  }

  /**
   * Whether `sender` is the source of such an event: the node hosting the actor for "up" and
   * "down", its supervisor (owner) for "restarting" and "gone".
   */
  #speaksFor(sender: string, ev: ActorEvent): boolean {
    switch (ev.e) {
      case "up":
        return ev.actor.node === sender;
      case "down":
        return ev.node === sender;
      case "restarting":
        return ev.owner === sender;
      case "gone":
        return this.#dir.actor(ev.id)?.info.owner === sender;
    }
  }

  /** On a reconnect: tell the others (heartbeat) and resend what may have been lost. */
  #watchConnection() {
    (async () => {
      for await (const s of this.nc.status()) {
        if (s.type !== "reconnect") continue;
        this.#conn++;
        this.#heartbeat?.update(this.#payload());
        this.#caller.reconnected();
        for (const l of [...this.#listeners]) {
          try {
            l({ type: "node_reconnected", node: this.nodeId });
          } catch { /* listener's problem */ }
        }
      }
    })().catch(() => {});
  }

  #payload(): Omit<Heartbeat, "seq"> {
    return {
      conn: this.#conn,
      node: this.nodeId,
      pid: Deno.pid,
      host: Deno.hostname(),
      interval: this.#opts.heartbeatMs,
      missed: this.#opts.missedHeartbeats,
      resources: this.#opts.resources,
      used: this.#host.used,
      placeable: this.#opts.placeable,
      rev: this.#host.rev,
      actors: this.#host.actors(),
      load: this.#host.load(),
      ended: this.#host.ended(),
    };
  }

  /**
   * The whole process was frozen (SIGSTOP, suspend) long enough to be declared dead: its actors
   * may already run elsewhere, so the instances here must not go on answering.
   */
  #frozen() {
    for (const a of this.#host.actors()) {
      this.#host.stop(a.id, "kill", "node", 0).catch(() => {});
    }
  }

  #onDirectory(e: DirectoryEvent) {
    if (e.type === "actor_down") {
      const c = this.#owned.get(e.actor.id);
      if (c && c.inc === e.actor.inc && c.state === "running") {
        if (e.final) {
          c.state = "stopped";
        } else {
          c.parent.childFailed(c, e.reason, e.detail);
        }
      }
    } else if (e.type === "node_down") {
      this.#orphaned(e.node, e.hb.pid);
      this.#replace(e.node);
    } else if (e.type === "node_up") {
      const o = this.#orphans.get(e.node);
      if (o) {
        this.#orphans.delete(e.node);
        clearTimeout(o.timer);
        // The same process is back (a partition healed): its actors here are still its own.
        // Another process under the same id is not the owner they had.
        if (o.pid !== e.hb.pid) this.#host.stopOwnedBy(e.node).catch(() => {});
      }
    }
    this.#tell(e);
  }

  /**
   * Node `owner` counts as dead: the actors it owns here stop unless it is back within the
   * owner grace. A partition longer than the liveness window makes each side take the other for
   * dead, and as TCP's retransmission backoff heals the two directions seconds apart, it can do so
   * again right after; stopping at once would cost a rollback each time (docs/architecture.md §5).
   */
  #orphaned(owner: string, pid: number) {
    if (!this.#host.actors().some((a) => a.owner === owner)) return;
    const prev = this.#orphans.get(owner);
    if (prev) return;
    const timer = setTimeout(() => {
      this.#orphans.delete(owner);
      this.#host.stopOwnedBy(owner).catch(() => {});
    }, this.#opts.ownerGraceMs);
    this.#orphans.set(owner, { pid, timer });
  }

  /** Starts a fresh node in place of local node `id`, which died, if allowed and in budget. */
  #replace(id: string) {
    const spec = this.#specs.get(id);
    const want = this.#opts.replaceNodes;
    if (!spec || !want || this.#closing) return;
    const budget = want === true ? { max: Math.max(2, this.#specs.size), withinMs: 60_000 } : want;
    this.#specs.delete(id);
    const now = Date.now();
    while (this.#replaced.length && now - this.#replaced[0] > budget.withinMs) {
      this.#replaced.shift();
    }
    if (this.#replaced.length >= budget.max) {
      console.error(
        `node ${id} died and is not replaced: ${budget.max} replacements in ${budget.withinMs} ms`,
      );
      return;
    }
    this.#replaced.push(now);
    this.addNodes([spec]).then(([n]) => {
      for (const l of [...this.#listeners]) {
        try {
          l({ type: "node_replaced", node: id, replacement: n.id });
        } catch { /* listener's problem */ }
      }
    }, (err) => {
      if (!this.#closing) console.error(`replacing node ${id} failed: ${err.message}`);
    });
  }

  #context(info: ActorInfo, stopped: AbortSignal): ActorContext {
    return {
      self: {
        id: info.id,
        name: info.name,
        type: info.type,
        module: info.module,
        inc: info.inc,
        node: info.node,
      },
      system: this,
      nc: this.nc,
      namespace: this.namespace,
      collectives: this.collectives,
      objects: () => this.objects(),
      emit: (kind, data) => this.emit(kind, data, { actor: info.id }),
      stopped,
    };
  }

  /**
   * Payload bytes this process has sent and received (calls and their replies, in both roles,
   * and collectives; frames as encoded, without NATS protocol overhead), calls it made, and how
   * many times an actor refused one of them for a full mailbox (each then held back and resent).
   */
  get stats(): Readonly<TrafficStats> {
    return this.#caller.stats;
  }

  /** The node processes this system started on this host. */
  get localNodes(): readonly LocalNode[] {
    return this.#nodes;
  }

  /** Credentials this system connects with (hand them to another process to join it). */
  get credentials(): Credentials {
    return { ...this.#opts.credentials };
  }

  /**
   * Listens to the system's events: nodes joining and leaving, actors going up, down, restarting
   * and away, and the application events any process publishes (`emit`). Returns the function
   * that stops listening. `eventRecord` (runtime/introspect.ts) turns one into JSON.
   */
  on(listener: (e: SystemEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Publishes an application event to every process of the system (their `on` listeners get it
   * as `{ type: "app", event }`): `kind` is a dotted name (`train.step`), `data` anything JSON
   * can carry, at most 1 MiB of it. Fire and forget: a process that is not listening at that
   * moment never sees it. An actor publishes with `ctx.emit`, which names it as the source.
   */
  emit(kind: string, data: unknown = null, options: { actor?: string } = {}): void {
    if (typeof kind !== "string" || kind.length > 128 || !APP_EVENT_KIND.test(kind)) {
      throw new InvalidArgumentError(
        `event kind ${JSON.stringify(kind)} is invalid: use dotted words of A-Z a-z 0-9 _ -`,
      );
    }
    if (this.#closing) return;
    const ev: AppEvent = {
      kind,
      node: this.nodeId,
      ...(options.actor !== undefined ? { actor: options.actor } : {}),
      time: Date.now(),
      seq: this.#appSeq,
      data,
    };
    const json = JSON.stringify(ev);
    const bytes = new TextEncoder().encode(json);
    if (bytes.length > MAX_APP_EVENT_BYTES) {
      throw new InvalidArgumentError(
        `event ${kind} is ${bytes.length} bytes as JSON; at most ${MAX_APP_EVENT_BYTES}`,
      );
    }
    this.#appSeq++;
    try {
      this.nc.publish(this.#subjects.appEvent(this.nodeId), bytes);
    } catch { /* closed or reconnecting: events are not kept */ }
  }

  /**
   * This process's view of the system: every node (host, pid, resources, heartbeat age) and every
   * actor it knows of (type, name, node, state, restarts, mailbox depth, calls per second). It
   * comes from heartbeats and lifecycle events only, so any process sees the same, one that
   * joined by URL included. Checked by `systemSnapshotSchema` (runtime/introspect.ts).
   */
  introspect(): SystemSnapshot {
    return buildSnapshot({
      system: this.name,
      self: this.nodeId,
      nodes: this.#dir.nodes,
      actors: this.#dir.actors,
      tracker: this.#rates,
    });
  }

  /** Live nodes, as heartbeats say. */
  nodes(): NodeInfo[] {
    return [...this.#dir.nodes.values()].map(({ hb }) => ({
      id: hb.node,
      host: hb.host,
      pid: hb.pid,
      resources: hb.resources,
      used: hb.used,
      placeable: hb.placeable,
      actors: hb.actors.length,
    }));
  }

  /** Actors this process knows of, with their state. */
  actors(): (ActorInfo & { state: string })[] {
    return [...this.#dir.actors.values()].map((e) => ({ ...e.info, state: e.state }));
  }

  /** Starts more local node processes and waits until they have joined. */
  async addNodes(specs: NodeSpec[], timeoutMs = 60_000): Promise<LocalNode[]> {
    this.#checkOpen();
    const identities = specs.map((_, i) => {
      if (!this.server?.hasNodeUsers) {
        const id = `${this.nodeId}-${this.#nodes.length + i}-${randomId("").slice(0, 4)}`;
        return { id, credentials: this.#opts.credentials };
      }
      const ident = this.server.takeNodeIdentity();
      if (!ident) {
        throw new NodeStartError(
          "every node identity of the embedded server is in use; start the system with a " +
            "larger server.nodeIdentities",
        );
      }
      return ident;
    });
    const started = specs.map((spec, i) =>
      LocalNode.start({
        id: identities[i].id,
        servers: [...this.servers],
        system: this.name,
        credentials: identities[i].credentials,
        resources: spec.resources ?? {},
        allowModules: this.#loader.allowed,
        allowBundles: this.#loader.allowedBundles,
        config: this.#opts.nodeConfig,
        heartbeatMs: this.#opts.heartbeatMs,
        missedHeartbeats: this.#opts.missedHeartbeats,
        env: spec.env,
      })
    );
    this.#nodes.push(...started);
    started.forEach((n, i) => {
      this.#specs.set(n.id, specs[i]);
      // The owner is the parent of its nodes: an exit is known at once, without waiting for
      // heartbeats to be missed.
      n.status.then(() => {
        if (!n.stopping && !this.#closing) this.#dir.nodeDown(n.id);
      });
    });
    const deadline = Date.now() + timeoutMs;
    while (!started.every((n) => this.#dir.nodes.has(n.id))) {
      const dead = started.find((n) => n.exited);
      if (dead) {
        throw new NodeStartError(`node ${dead.id} exited before joining (see its output above)`);
      }
      if (Date.now() > deadline) {
        throw new NodeStartError(`nodes did not join within ${timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    return started;
  }

  /**
   * Spawns an actor on a node that has the resources it asks for, and returns its typed handle.
   * The handle survives restarts (up to `maxRestarts` within `withinMs`).
   */
  async spawn<D extends AnyActorDef>(
    def: D,
    input: InitInput<D>,
    options: SpawnOptions = {},
  ): Promise<ActorHandle<D>> {
    this.#checkOpen();
    const budget: Budget = {
      maxRestarts: options.maxRestarts ?? DEFAULT_BUDGET.maxRestarts,
      withinMs: options.withinMs ?? DEFAULT_BUDGET.withinMs,
    };
    const sup = new SupervisorNode(
      `spawn:${options.name ?? def.name}`,
      "one_for_one",
      budget,
      this.#env,
    );
    const c = this.#newChild(def, input, options, sup);
    sup.children.push(c);
    try {
      await sup.startAll();
    } catch (e) {
      this.#owned.delete(c.id);
      throw e;
    }
    this.#roots.add(sup);
    return this.#handleFor(def, this.#refOf(c));
  }

  /** Starts a supervision tree and returns handles to its children, typed by the spec. */
  async supervise<C extends ChildSpecs>(
    spec: Omit<SupervisorSpec<C>, "kind"> & { kind?: "supervisor" },
  ): Promise<Supervisor<C>> {
    this.#checkOpen();
    let failedResolve!: (e: SupervisorFailedError) => void;
    const failed = new Promise<SupervisorFailedError>((r) => failedResolve = r);
    const build = (s: Omit<SupervisorSpec, "kind">, label: string, parent?: SupervisorNode) => {
      if (s.strategy !== "one_for_one" && s.strategy !== "one_for_all") {
        throw new InvalidArgumentError(`unknown supervision strategy ${String(s.strategy)}`);
      }
      const node = new SupervisorNode(
        label,
        s.strategy,
        {
          maxRestarts: s.maxRestarts ?? DEFAULT_BUDGET.maxRestarts,
          withinMs: s.withinMs ?? DEFAULT_BUDGET.withinMs,
        },
        this.#env,
        parent,
      );
      const handles: Record<string, unknown> = {};
      for (const [key, cs] of Object.entries(s.children)) {
        if (cs.kind === "actor") {
          const c = this.#newChild(cs.def, cs.input, cs.options, node);
          node.children.push(c);
          handles[key] = this.#handleFor(cs.def, this.#refOf(c));
        } else if (cs.kind === "supervisor") {
          const sub = build(cs, `${label}/${key}`, node);
          node.children.push(sub.node);
          handles[key] = sub.api;
        } else {
          throw new InvalidArgumentError(`child ${key}: use child(...) or supervisor(...)`);
        }
      }
      const api = {
        children: Object.freeze(handles),
        failed,
        stop: () => this.#stopTree(node),
      };
      return { node, api };
    };
    const tree = build(spec, "supervisor");
    this.#failures.set(tree.node, failedResolve);
    try {
      await tree.node.startAll();
    } catch (e) {
      await this.#stopTree(tree.node);
      throw e;
    }
    this.#roots.add(tree.node);
    return tree.api as unknown as Supervisor<C>;
  }

  async #stopTree(node: SupervisorNode) {
    node.close();
    this.#roots.delete(node);
    this.#failures.delete(node);
    await Promise.all(node.actors().map((a) => this.#stopChild(a, 5000)));
  }

  /**
   * Looks up a named actor (from any process of the system), waiting up to `timeoutMs` for it to
   * show up. Throws ActorNotFoundError, or ActorTypeMismatchError when it is of another type.
   */
  async getActor<D extends AnyActorDef>(
    def: D,
    name: string,
    options: { timeoutMs?: number } = {},
  ): Promise<ActorHandle<D>> {
    this.#checkOpen();
    checkToken("actor", name);
    if (!isActorDef(def)) {
      throw new InvalidArgumentError("getActor needs a definition from defineActor");
    }
    const deadline = Date.now() + (options.timeoutMs ?? 3000);
    for (;;) {
      const e = this.#dir.actor(name);
      if (e && e.state !== "gone") {
        if (e.info.type !== def.name) throw new ActorTypeMismatchError(name, def.name, e.info.type);
        return this.#handleFor(def, {
          id: e.info.id,
          name: e.info.name,
          type: e.info.type,
          module: e.info.module,
        });
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new ActorNotFoundError(name);
      const ac = new AbortController();
      const t = setTimeout(() => ac.abort(), left);
      await this.#dir.changed(name, ac.signal);
      clearTimeout(t);
    }
  }

  /** A handle from a ref (e.g. one received in a message). */
  handle<D extends AnyActorDef>(def: D, ref: ActorRef): ActorHandle<D> {
    if (ref.type !== def.name) throw new ActorTypeMismatchError(ref.id, def.name, ref.type);
    return this.#handleFor(def, ref);
  }

  /**
   * Stops an actor for good: its queued calls fail with ActorDiedError, its running call's signal
   * aborts (it gets `graceMs` to finish), `close` runs, and it is not restarted.
   */
  async stop(
    target: { ref: ActorRef } | ActorRef,
    options: { graceMs?: number } = {},
  ): Promise<void> {
    this.#checkOpen();
    const ref = "ref" in target ? target.ref : target;
    const c = this.#owned.get(ref.id);
    if (c) return await this.#stopChild(c, options.graceMs ?? 5000);
    await this.#requestStop(ref.id, "stop", options.graceMs ?? 5000);
  }

  /** Kills an actor at once, as a crash would: its supervisor restarts it if the budget allows. */
  async kill(target: { ref: ActorRef } | ActorRef): Promise<void> {
    this.#checkOpen();
    const ref = "ref" in target ? target.ref : target;
    await this.#requestStop(ref.id, "kill", 0);
  }

  async #stopChild(c: ActorChild, graceMs: number) {
    const was = c.state;
    c.state = "stopped";
    if (was === "running") await this.#requestStop(c.id, "stop", graceMs, c.info?.node);
    this.#owned.delete(c.id);
    this.#dir.markGone(c.id, "stopped");
    if (was !== "running" && was !== "stopped") {
      this.#publish({ e: "gone", id: c.id, inc: c.inc, reason: "stopped" });
    }
  }

  /** Asks the node hosting `id` (by the directory, or `at` when the caller knows) to end it. */
  async #requestStop(id: string, mode: "stop" | "kill", graceMs: number, at?: string) {
    const e = this.#dir.actor(id);
    const node = at ?? (e && e.state === "up" ? e.info.node : undefined);
    if (!node || !this.#dir.nodes.has(node)) return;
    const ac = new AbortController();
    const off = this.#dir.on((ev) => {
      if (ev.type === "node_down" && ev.node === node) ac.abort();
    });
    try {
      await this.#caller.request(
        this.#subjects.control(node),
        { k: "stop" },
        { id, mode, graceMs },
        { actor: id, method: mode },
        graceMs + 10_000,
        ac.signal,
      );
    } catch (err) {
      if (!(err instanceof CallCancelledError || err instanceof ActorNotFoundError)) throw err;
    } finally {
      off();
    }
  }

  /**
   * Ships a local actor module to the nodes: bundles it with the files it imports by relative
   * path (bare and `npm:` imports are left to each node's import map), stores the bundle in the
   * object store under its SHA-256 digest, and returns it. A node imports it only if that digest
   * is in its own allow-list (`--allow-bundle`, `init({ allowBundles })`). Spawn with
   * `shipped.actor(Def)` in place of `Def`.
   *
   * ```ts
   * const shipped = await system.shipModule(new URL("./my_actor.ts", import.meta.url));
   * const a = await system.spawn(shipped.actor(MyActor), input);
   * ```
   */
  async shipModule(entry: URL | string): Promise<ShippedModule> {
    this.#checkOpen();
    const b = await bundleModule(entry, { config: this.#opts.nodeConfig ?? defaultNodeConfig() });
    await (await this.objects()).put(bundleObjectName(b.digest), b.bytes, {
      description: `module bundle of ${b.entry}`,
    });
    const shipped: ShippedModule = {
      digest: b.digest,
      entry: b.entry,
      files: b.files,
      size: b.bytes.byteLength,
      actor: (def) => bundledActor(def, shipped),
    };
    return Object.freeze(shipped);
  }

  /** The system's object store (a JetStream Object Store bucket), opened on first use. */
  objects(): Promise<ObjectStore> {
    this.#checkOpen();
    this.#objects ??= ObjectStore.open(this.nc, `actors_${this.name}`).catch((e) => {
      this.#objects = undefined;
      throw e;
    });
    return this.#objects;
  }

  #checkOpen() {
    if (this.#closing) throw new SystemClosedError("the system is shut down");
  }

  #refOf(c: ActorChild): ActorRef {
    return { id: c.id, name: c.options.name, type: c.def.name, module: c.def.module };
  }

  #newChild(
    def: AnyActorDef,
    input: unknown,
    options: ChildOptions,
    parent: SupervisorNode,
  ): ActorChild {
    if (!isActorDef(def)) {
      throw new InvalidArgumentError("spawn needs a definition from defineActor");
    }
    const parsed = def.init.safeParse(input);
    if (!parsed.success) throw new SchemaError(def.name, "init", issuesOf(parsed.error));
    const name = options.name;
    if (name !== undefined) checkToken("actor", name);
    const id = name ?? randomId("_");
    const prev = this.#dir.actor(id);
    if (this.#owned.has(id) || (prev && prev.state !== "gone")) throw new ActorExistsError(id);
    for (const [k, v] of Object.entries(options.resources ?? {})) {
      if (!(v >= 0)) throw new InvalidArgumentError(`resource ${k} must be a non-negative number`);
    }
    this.#loader.register(def);
    const opts: ChildOptions = def.module === undefined && options.node === undefined
      ? { ...options, node: "local" }
      : { ...options };
    const c = new ActorChild(id, def, parsed.data, opts, parent, prev ? prev.info.inc + 1 : 0);
    this.#owned.set(id, c);
    return c;
  }

  #handleFor<D extends AnyActorDef>(def: D, ref: ActorRef): ActorHandle<D> {
    const h: Record<string, unknown> = { ref: Object.freeze({ ...ref }) };
    const methods = def.methods as Record<string, MethodSpec<unknown, Schema, Schema>>;
    for (const m of Object.keys(methods)) {
      const spec = methods[m];
      const where = `${def.name}.${m}`;
      h[m] = async (input: unknown, options?: CallOptions) => {
        const p = spec.input.safeParse(input);
        if (!p.success) throw new SchemaError(where, "input", issuesOf(p.error));
        const out = await this.#caller.call(ref.id, m, p.data, {
          ...options,
          errors: def.errors,
          where,
        });
        const q = spec.output.safeParse(out);
        if (!q.success) throw new SchemaError(where, "output", issuesOf(q.error));
        return q.data;
      };
    }
    return Object.freeze(h) as ActorHandle<D>;
  }

  get #env(): SupervisionEnv {
    return {
      start: (c) => this.#place(c),
      kill: (c) => this.#requestStop(c.id, "kill", 0, c.info?.node),
      alive: (c) => {
        const e = this.#dir.actor(c.id);
        return e !== undefined && e.state === "up" && e.info.inc === c.inc;
      },
      restarting: (c) => {
        this.#dir.markRestarting(c.id);
        this.#publish({ e: "restarting", id: c.id, inc: c.inc, owner: this.nodeId });
      },
      gone: (c, reason, detail) => {
        this.#owned.delete(c.id);
        this.#dir.markGone(c.id, reason, detail);
        this.#publish({ e: "gone", id: c.id, inc: c.inc, reason, detail });
        return Promise.resolve();
      },
      failed: (sup, error) => {
        this.#roots.delete(sup);
        this.#failures.get(sup)?.(error);
        this.#failures.delete(sup);
        for (const l of [...this.#listeners]) {
          try {
            l({ type: "supervisor_failed", supervisor: sup.label, error });
          } catch { /* listener's problem */ }
        }
      },
    };
  }

  #publish(ev: ActorEvent) {
    try {
      this.nc.publish(this.#subjects.event(this.nodeId), JSON.stringify(ev));
    } catch { /* closed */ }
  }

  async #place(c: ActorChild): Promise<ActorInfo> {
    const o = c.options;
    const resources = o.resources ?? {};
    const initTimeoutMs = o.initTimeoutMs ?? DEFAULT_INIT_TIMEOUT;
    const deadline = Date.now() + (o.placementTimeoutMs ?? DEFAULT_PLACEMENT_TIMEOUT);
    const req: SpawnRequest = {
      id: c.id,
      name: o.name,
      type: c.def.name,
      module: c.def.module,
      ...(c.def.bundle !== undefined ? { bundle: c.def.bundle } : {}),
      inc: c.inc,
      owner: this.nodeId,
      resources,
      mailbox: o.mailbox ?? DEFAULT_MAILBOX,
      initTimeoutMs,
      input: c.input,
    };
    // A restart may not go back to a pinned node that died: then any node with the resources will
    // do. ("local" is this process, which is alive since it is the one restarting.)
    const pinned =
      c.inc > 0 && o.node !== undefined && o.node !== "local" && !this.#dir.nodes.has(o.node)
        ? undefined
        : o.node;
    const exclude = new Set<string>();
    for (;;) {
      if (this.#closing) throw new SystemClosedError("the system is shut down");
      const node = pickNode(this.#dir.nodes, {
        resources,
        self: this.nodeId,
        pinned,
        exclude,
        inflight: this.#reclaiming(c),
        load: (id) => this.#load(id),
      });
      if (!node) {
        if (Date.now() >= deadline) {
          throw new NoNodeAvailableError(this.#noNodeMessage(c, resources));
        }
        await new Promise((r) => setTimeout(r, 100));
        exclude.clear();
        continue;
      }
      this.#reserve(node, resources, 1);
      const ac = new AbortController();
      const off = this.#dir.on((ev) => {
        if (ev.type === "node_down" && ev.node === node) ac.abort();
      });
      try {
        const raw = await this.#caller.request(
          this.#subjects.control(node),
          { k: "spawn" },
          req,
          { actor: c.id, method: "spawn" },
          initTimeoutMs + 10_000,
          ac.signal,
        );
        const info = actorInfoSchema.parse(raw);
        this.#dir.record(info);
        return info;
      } catch (e) {
        const retry = e instanceof InsufficientResourcesError || e instanceof ActorNotFoundError ||
          (e instanceof CallCancelledError && ac.signal.aborted);
        if (!retry) throw e;
        exclude.add(node);
      } finally {
        off();
        this.#reserve(node, resources, -1);
      }
    }
  }

  /**
   * The reservations in flight, less what an older incarnation of `c` still holds on a node (a
   * node that was cut off and is back, hosting the instance this process took for dead): a
   * restart placed there takes that instance's place (runtime/host.ts), so its resources count as
   * free for it.
   */
  #reclaiming(c: ActorChild): ReadonlyMap<string, Resources> {
    if (c.inc === 0) return this.#inflight;
    let out: Map<string, Resources> | undefined;
    for (const [id, n] of this.#dir.nodes) {
      const old = n.hb.actors.find((a) =>
        a.id === c.id && a.inc < c.inc && a.owner === this.nodeId && a.node === id
      );
      if (!old) continue;
      out ??= new Map([...this.#inflight].map(([k, v]) => [k, { ...v }]));
      const cur = out.get(id) ?? {};
      for (const [k, v] of Object.entries(old.resources)) cur[k] = (cur[k] ?? 0) - v;
      out.set(id, cur);
    }
    return out ?? this.#inflight;
  }

  #load(node: string): number {
    let n = 0;
    for (const e of this.#dir.actors.values()) if (e.state === "up" && e.info.node === node) n++;
    return n;
  }

  #reserve(node: string, r: Resources, sign: 1 | -1) {
    const cur = this.#inflight.get(node) ?? {};
    for (const [k, v] of Object.entries(r)) cur[k] = (cur[k] ?? 0) + sign * v;
    this.#inflight.set(node, cur);
  }

  #noNodeMessage(c: ActorChild, resources: Resources): string {
    const want = Object.keys(resources).length ? JSON.stringify(resources) : "no resources";
    const nodes = this.nodes().map((n) =>
      `${n.id}${n.id === this.nodeId ? " (this process)" : ""}: ${
        JSON.stringify(n.resources)
      } used ${JSON.stringify(n.used)}`
    );
    const where = c.options.node ? ` on node ${c.options.node}` : "";
    return `no node can host ${c.id} (${c.def.name}, ${want})${where}; nodes: ${
      nodes.join("; ") || "none"
    }`;
  }

  /**
   * Shuts down: stops the actors this process owns and hosts, leaves the system, and stops the
   * node processes and the server it started. Idempotent.
   */
  shutdown(): Promise<void> {
    this.#closing ??= (async () => {
      for (const r of this.#roots) r.close();
      const owned = [...this.#owned.values()].filter((c) => c.state === "running");
      for (const c of owned) c.state = "stopped";
      await Promise.all(owned.map((c) => this.#requestStop(c.id, "stop", 2000).catch(() => {})));
      for (const o of this.#orphans.values()) clearTimeout(o.timer);
      this.#orphans.clear();
      await this.#host.close(2000);
      clearInterval(this.#tick);
      clearInterval(this.#refresh);
      this.#caller.close();
      this.#dir.close();
      for (const s of this.#subs) s.unsubscribe();
      await this.#heartbeat?.stop();
      try {
        await this.nc.drain();
      } catch {
        await this.nc.close().catch(() => {});
      }
      await Promise.all(this.#nodes.map((n) => n.stop()));
      await this.server?.stop();
    })();
    return this.#closing;
  }

  /** `await using system = await init()` shuts it down at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.shutdown();
  }
}

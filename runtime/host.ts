/**
 * The hosting side of a node: takes spawn/stop/kill requests and runs actor instances.
 *
 * Resources are reserved when a spawn arrives (a node never over-commits, even when two callers
 * pick it at once) and released when the instance ends. Every start and end bumps the host's
 * revision, published in events and heartbeats, so other processes can tell a stale heartbeat
 * from a fresh one.
 * @module
 */
import type { Msg, NatsConnection, Subscription } from "@nats-io/nats-core";
import type { ActorContext } from "./actor.ts";
import {
  ActorDiedError,
  ActorExistsError,
  type DeathReason,
  FrameError,
  InsufficientResourcesError,
  InvalidArgumentError,
  toWireError,
} from "./errors.ts";
import type { TrafficStats } from "./caller.ts";
import type { Deadlines } from "./deadlines.ts";
import { ActorInstance } from "./instance.ts";
import type { ModuleLoader } from "./modules.ts";
import {
  type ActorEvent,
  type ActorInfo,
  type ActorLoad,
  type EndedActor,
  issuesOf,
  type Resources,
  type SpawnRequest,
  spawnRequestSchema,
  stopRequestSchema,
  type Subjects,
} from "./protocol.ts";
import { FrameInbox, send } from "./wire.ts";

/** How long, and how many, ended actors a heartbeat lists. */
const ENDED_MS = 10_000;
const MAX_ENDED = 64;

/** What a host needs from its process. */
export interface HostEnv {
  nc: NatsConnection;
  subjects: Subjects;
  node: string;
  resources: Resources;
  loader: ModuleLoader;
  maxFrameBytes: number;
  deadlines: Deadlines;
  stats: TrafficStats;
  context(info: ActorInfo, stopped: AbortSignal): ActorContext;
  /** Called whenever the hosted set changes (to refresh the heartbeat). */
  changed(): void;
}

/** Hosts actor instances for one node. */
export class Host {
  readonly #env: HostEnv;
  readonly #instances = new Map<string, ActorInstance>();
  readonly #starting = new Set<string>();
  /**
   * Instances being stopped: still listed in heartbeats until they have ended, so that the list
   * and the revision change together (see `stop`).
   */
  readonly #stopping = new Map<string, ActorInstance>();
  readonly #used: Resources = {};
  readonly #inbox: FrameInbox;
  #sub?: Subscription;
  #rev = 0;
  #closed = false;
  /** Instances that ended lately, with when (listed in heartbeats for a while). */
  #ended: (EndedActor & { at: number })[] = [];

  constructor(env: HostEnv) {
    this.#env = env;
    this.#inbox = new FrameInbox(env.maxFrameBytes);
  }

  /** Starts taking control requests. */
  start() {
    this.#sub = this.#env.nc.subscribe(this.#env.subjects.control(this.#env.node), {
      callback: (err, msg) => {
        if (!err) this.#onControl(msg);
      },
    });
  }

  /** Revision of the hosted set. */
  get rev(): number {
    return this.#rev;
  }

  /** Resources currently reserved. */
  get used(): Resources {
    return { ...this.#used };
  }

  /**
   * The hosted actors, as listed in heartbeats: the running ones and those still stopping. An
   * instance leaves this list only in the same step that bumps the revision and notes how it
   * ended, so any snapshot of list, `rev` and `ended` agrees with itself.
   */
  actors(): ActorInfo[] {
    return [...this.#stopping.values(), ...this.#instances.values()].map((i) => i.info);
  }

  /** Mailbox and call counters of the hosted actors, by id. */
  load(): Record<string, ActorLoad> {
    const out: Record<string, ActorLoad> = {};
    for (const [id, i] of this.#instances) out[id] = i.load;
    return out;
  }

  /** Actors that ended here in the last 10 s, and how (heartbeats list them). */
  ended(now = Date.now()): EndedActor[] {
    this.#ended = this.#ended.filter((e) => now - e.at < ENDED_MS).slice(-MAX_ENDED);
    return this.#ended.map(({ id, inc, reason, final }) => ({ id, inc, reason, final }));
  }

  /** The instance of an actor hosted here, if any. */
  instance(id: string): ActorInstance | undefined {
    return this.#instances.get(id);
  }

  #onControl(msg: Msg) {
    let m;
    try {
      m = this.#inbox.accept(msg);
    } catch (e) {
      if (msg.reply) {
        this.#reply(msg.reply, e instanceof FrameError ? e : new FrameError(String(e)));
      }
      return;
    }
    if (!m || !m.reply) return;
    const reply = m.reply;
    const kind = m.meta.k;
    const run = async () => {
      if (kind === "spawn") {
        const req = spawnRequestSchema.safeParse(m.value);
        if (!req.success) {
          throw new InvalidArgumentError(`bad spawn request: ${issuesOf(req.error)}`);
        }
        return await this.spawn(req.data);
      }
      if (kind === "stop") {
        const req = stopRequestSchema.safeParse(m.value);
        if (!req.success) {
          throw new InvalidArgumentError(`bad stop request: ${issuesOf(req.error)}`);
        }
        const reason: DeathReason = req.data.mode === "stop" ? "stopped" : "killed";
        return await this.stop(req.data.id, req.data.mode, reason, req.data.graceMs);
      }
      throw new InvalidArgumentError(`unknown control request ${String(kind)}`);
    };
    run().then(
      (v) => send(this.#env.nc, reply, { k: "ok" }, v ?? null).catch(() => {}),
      (e) => this.#reply(reply, e),
    );
  }

  #reply(reply: string, e: unknown) {
    send(this.#env.nc, reply, { k: "err", e: toWireError(e) }, null).catch(() => {});
  }

  /** Starts an instance; resolves with its info once its constructor has finished. */
  async spawn(req: SpawnRequest): Promise<ActorInfo> {
    if (this.#closed) throw new ActorDiedError(req.id, "shutdown", "node is shutting down");
    const old = this.#instances.get(req.id);
    if (old && old.info.inc < req.inc && old.info.owner === req.owner) {
      // Its owner took this instance for dead (this node was cut off) and restarts it here: the
      // restart takes the old instance's place and resources.
      await this.stop(req.id, "kill", "killed", 0);
    }
    if (this.#instances.has(req.id) || this.#starting.has(req.id)) {
      throw new ActorExistsError(req.id);
    }
    for (const [k, v] of Object.entries(req.resources)) {
      const free = (this.#env.resources[k] ?? 0) - (this.#used[k] ?? 0);
      if (v > free) {
        throw new InsufficientResourcesError(
          `node ${this.#env.node} has ${free} ${k} free, ${req.id} asks for ${v}`,
        );
      }
    }
    this.#reserve(req.resources, 1);
    this.#starting.add(req.id);
    try {
      const def = await this.#env.loader.load(req.type, req.module, req.bundle);
      const info: ActorInfo = {
        id: req.id,
        name: req.name,
        type: req.type,
        module: req.module,
        inc: req.inc,
        node: this.#env.node,
        owner: req.owner,
        resources: req.resources,
        mailbox: req.mailbox,
      };
      const inst = new ActorInstance(
        {
          nc: this.#env.nc,
          subject: this.#env.subjects.actor(req.id),
          context: this.#env.context,
          maxFrameBytes: this.#env.maxFrameBytes,
          deadlines: this.#env.deadlines,
          stats: this.#env.stats,
        },
        def,
        info,
        req.mailbox,
      );
      await inst.start(req.input, req.initTimeoutMs);
      if (this.#closed) {
        await inst.stop("kill", "shutdown", 0);
        throw new ActorDiedError(req.id, "shutdown", "node is shutting down");
      }
      this.#instances.set(req.id, inst);
      this.#rev++;
      // The revision it came up at: a heartbeat older than that cannot speak of its end.
      info.rev = this.#rev;
      this.#env.changed();
      this.#publish({ e: "up", actor: info, rev: this.#rev });
      return info;
    } catch (e) {
      this.#reserve(req.resources, -1);
      throw e;
    } finally {
      this.#starting.delete(req.id);
    }
  }

  /** Stops (gracefully, final) or kills (at once, restartable) an instance hosted here. */
  async stop(
    id: string,
    mode: "stop" | "kill",
    reason: DeathReason,
    graceMs: number,
  ): Promise<boolean> {
    const inst = this.#instances.get(id);
    if (!inst) return false;
    this.#instances.delete(id);
    // Until its handler and `close` are done (seconds, for a worker freeing GPU memory) it stays
    // listed at the old revision: dropped from the list now, its node's heartbeats would carry
    // an unchanged revision without it and without an `ended` entry, which other processes must
    // read as a death they missed ("node"), not as the stop it is.
    const key = `${id}#${inst.info.inc}`;
    this.#stopping.set(key, inst);
    try {
      await inst.stop(mode, reason, graceMs);
    } finally {
      this.#stopping.delete(key);
    }
    this.#reserve(inst.info.resources, -1);
    this.#rev++;
    this.#ended.push({ id, inc: inst.info.inc, reason, final: mode === "stop", at: Date.now() });
    this.#env.changed();
    this.#publish({
      e: "down",
      id,
      inc: inst.info.inc,
      node: this.#env.node,
      reason,
      final: mode === "stop",
      rev: this.#rev,
    });
    return true;
  }

  /** Stops every actor whose owner is `owner` (that process died: nobody supervises them). */
  async stopOwnedBy(owner: string) {
    const ids = [...this.#instances.values()].filter((i) => i.info.owner === owner).map((i) =>
      i.info.id
    );
    await Promise.all(ids.map((id) => this.stop(id, "stop", "owner", 1000)));
  }

  /** Stops every instance and the control endpoint. */
  async close(graceMs = 2000) {
    if (this.#closed) return;
    this.#closed = true;
    this.#sub?.unsubscribe();
    await Promise.all(
      [...this.#instances.keys()].map((id) => this.stop(id, "stop", "shutdown", graceMs)),
    );
    this.#inbox.clear();
    await this.#env.loader.bundles.close();
  }

  #reserve(r: Resources, sign: 1 | -1) {
    for (const [k, v] of Object.entries(r)) this.#used[k] = (this.#used[k] ?? 0) + sign * v;
  }

  #publish(ev: ActorEvent) {
    try {
      this.#env.nc.publish(this.#env.subjects.event(this.#env.node), JSON.stringify(ev));
    } catch { /* closed */ }
  }
}

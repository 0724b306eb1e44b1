/**
 * The calling side: requests over one multiplexed inbox, with timeouts, cancellation and
 * failure detection.
 *
 * Each process subscribes once to `<inbox>.*`; a call publishes to the actor's subject with a
 * reply subject `<inbox>.<callId>`. Pending calls are indexed by actor, so when the directory
 * learns that an incarnation ended (heartbeats stopped, or a down event) its pending calls fail
 * with ActorDiedError at once instead of waiting for their timeout. While an actor restarts,
 * new calls wait for it (up to their deadline) or fail at once with `failFast`. While an actor's
 * mailbox is full, calls to it are held back here and sent as room frees up (runtime/flow.ts).
 * @module
 */
import { createInbox, type Msg, type NatsConnection, type Subscription } from "@nats-io/nats-core";
import type { Meta } from "./codec.ts";
import type { Directory } from "./directory.ts";
import {
  ActorDiedError,
  ActorNotFoundError,
  CallCancelledError,
  CallTimeoutError,
  FrameError,
  InvalidArgumentError,
  MailboxFullError,
  SystemClosedError,
  type WireError,
} from "./errors.ts";
import { type ErrorClass, errorOfReply } from "./declared_errors.ts";
import type { Subjects } from "./protocol.ts";
import {
  encode,
  type Encoded,
  FrameInbox,
  type Incoming,
  isNoResponders,
  publish,
} from "./wire.ts";
import { encodeFrame } from "./codec.ts";
import { Deadlines } from "./deadlines.ts";
import { Lane, type Ticket } from "./flow.ts";

/** Default call timeout (docs/architecture.md §5). */
export const DEFAULT_TIMEOUT_MS = 30_000;

/** How long a call to an actor this process has not heard of waits for news of it. */
const LOOKUP_GRACE_MS = 1000;

type Outcome = { kind: "reply"; m: Incoming } | { kind: "noresp" };

interface Pending {
  actor?: string;
  inc?: number;
  /** The node the request went to. */
  node?: string;
  /** Publishes the request again (idempotent calls only). */
  resend?: () => void;
  resolve(o: Outcome): void;
  reject(e: Error): void;
}

/** Traffic counters of one process (payload bytes, without NATS protocol overhead). */
export interface TrafficStats {
  bytesSent: number;
  bytesReceived: number;
  calls: number;
  /** Calls an actor refused because its mailbox was full (then held back and sent again). */
  refused: number;
}

/** Options of one request. */
export interface RequestOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  failFast?: boolean;
  idempotent?: boolean;
  /** The error classes the actor declares: its exceptions of these arrive as themselves. */
  errors?: readonly ErrorClass[];
  /** `<type>.<method>`, to name the call in a SchemaError. */
  where?: string;
  /**
   * Most calls this process may have pending to the actor (sent or held back) when this one is
   * made; past it the call fails at once with MailboxFullError. Default unlimited.
   */
  maxPendingCalls?: number;
}

/** Sends calls and requests and routes their replies. */
export class Caller {
  readonly #nc: NatsConnection;
  readonly #dir: Directory;
  readonly #subjects: Subjects;
  readonly #prefix: string;
  readonly #inbox: FrameInbox;
  readonly #pending = new Map<number, Pending>();
  readonly #byActor = new Map<string, Set<Pending>>();
  /** Flow control of the calls to each actor, while any are pending. */
  readonly #lanes = new Map<string, Lane>();
  #epochs = 0;
  readonly stats: TrafficStats = {
    bytesSent: 0,
    bytesReceived: 0,
    calls: 0,
    refused: 0,
  };
  /** Call deadlines of this process (shared with the actors it hosts). */
  readonly deadlines = new Deadlines();
  #sub?: Subscription;
  #next = 1;
  #closed = false;
  #off?: () => void;

  constructor(
    nc: NatsConnection,
    subjects: Subjects,
    dir: Directory,
    maxFrameBytes: number,
    inboxPrefix?: string,
  ) {
    this.#nc = nc;
    this.#dir = dir;
    this.#subjects = subjects;
    this.#prefix = createInbox(inboxPrefix);
    this.#inbox = new FrameInbox(maxFrameBytes);
  }

  /** Starts routing replies and watching for dead actors. */
  start() {
    this.#sub = this.#nc.subscribe(`${this.#prefix}.*`, {
      callback: (err, msg) => {
        if (!err) this.#onReply(msg);
      },
    });
    this.#off = this.#dir.on((e) => {
      if (e.type === "node_reconnected") return this.#resend((p) => p.node === e.node);
      if (e.type !== "actor_down") return;
      const set = this.#byActor.get(e.actor.id);
      if (!set) return;
      for (const p of [...set]) {
        if (p.inc === e.actor.inc) p.reject(new ActorDiedError(e.actor.id, e.reason, e.detail));
      }
    });
  }

  /**
   * This process's connection was re-established: requests and replies in flight may have been
   * lost with the server, so idempotent calls go out again.
   */
  reconnected() {
    this.#resend(() => true);
  }

  #resend(which: (p: Pending) => boolean) {
    for (const p of this.#pending.values()) {
      if (p.resend && which(p)) p.resend();
    }
  }

  #onReply(msg: Msg) {
    const id = Number(msg.subject.slice(this.#prefix.length + 1));
    const p = this.#pending.get(id);
    if (!p) return;
    if (isNoResponders(msg)) return p.resolve({ kind: "noresp" });
    let m: Incoming | undefined;
    try {
      m = this.#inbox.accept(msg);
    } catch (e) {
      return p.reject(e instanceof FrameError ? e : new FrameError(String(e)));
    }
    if (m) {
      this.stats.bytesReceived += m.bytes;
      p.resolve({ kind: "reply", m });
    }
  }

  #register(p: Pending): number {
    const id = this.#next++;
    this.#pending.set(id, p);
    if (p.actor !== undefined) {
      let set = this.#byActor.get(p.actor);
      if (!set) this.#byActor.set(p.actor, set = new Set());
      set.add(p);
    }
    return id;
  }

  #unregister(id: number, p: Pending) {
    this.#pending.delete(id);
    if (p.actor !== undefined) {
      const set = this.#byActor.get(p.actor);
      set?.delete(p);
      if (set && set.size === 0) this.#byActor.delete(p.actor);
    }
  }

  /**
   * Publishes one request and waits for its outcome. Rejects with CallTimeoutError at the
   * deadline, CallCancelledError when `signal` aborts, ActorDiedError when the directory sees
   * incarnation `inc` of `actor` end.
   */
  #exchange(
    subject: string,
    meta: Meta,
    value: unknown,
    deadline: number,
    what: {
      actor: string;
      method: string;
      inc?: number;
      node?: string;
      idempotent?: boolean;
      timeoutMs: number;
    },
    signal?: AbortSignal,
  ): Promise<Outcome> {
    if (this.#closed) return Promise.reject(new SystemClosedError("the system is shut down"));
    const encoded = encode(this.#nc, meta, value);
    return new Promise<Outcome>((resolve, reject) => {
      const live: { cancel?: () => void } = {};
      let id = 0;
      const tracked = what.inc !== undefined;
      const cleanup = () => {
        live.cancel?.();
        signal?.removeEventListener("abort", onAbort);
        this.#unregister(id, p);
      };
      const cancelRemote = () => {
        if (tracked) {
          try {
            this.#nc.publish(subject, encodeFrame({ k: "cancel" }, null), {
              reply: `${this.#prefix}.${id}`,
            });
          } catch { /* closed */ }
        }
      };
      const p: Pending = {
        actor: tracked ? what.actor : undefined,
        inc: what.inc,
        node: what.node,
        resolve: (o) => {
          cleanup();
          resolve(o);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      };
      const onAbort = () => {
        p.reject(new CallCancelledError(what.actor, what.method));
        cancelRemote();
      };
      if (signal?.aborted) return reject(new CallCancelledError(what.actor, what.method));
      id = this.#register(p);
      live.cancel = this.deadlines.add(deadline, () => {
        p.reject(new CallTimeoutError(what.actor, what.method, what.timeoutMs));
        cancelRemote();
      });
      signal?.addEventListener("abort", onAbort, { once: true });
      this.stats.bytesSent += encoded.bytes;
      const reply = `${this.#prefix}.${id}`;
      const send = (e: Encoded) => {
        if (e.frame) this.#nc.publish(subject, e.frame, { reply });
        else publish(this.#nc, subject, e, reply).catch((err) => p.reject(err));
      };
      if (what.idempotent) {
        p.resend = () => {
          try {
            // Parts go out under a new transfer id: the receiver may hold some of the first.
            send(encoded.frame ? encoded : encode(this.#nc, meta, value));
          } catch { /* closed: the call fails by other means */ }
        };
      }
      send(encoded);
    });
  }

  /** Calls `method` of actor `id`, with the input already validated. Returns the raw output. */
  async call(
    id: string,
    method: string,
    value: unknown,
    options: RequestOptions = {},
  ): Promise<unknown> {
    if (this.#closed) throw new SystemClosedError("the system is shut down");
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const max = options.maxPendingCalls;
    if (max !== undefined && !(Number.isInteger(max) && max >= 1)) {
      throw new InvalidArgumentError(`maxPendingCalls must be a positive integer, not ${max}`);
    }
    let lane = this.#lanes.get(id);
    if (max !== undefined && (lane?.live ?? 0) >= max) throw new MailboxFullError(id, max);
    if (!lane) {
      const l = new Lane(() => ++this.#epochs, () => {
        if (this.#lanes.get(id) === l) this.#lanes.delete(id);
      });
      this.#lanes.set(id, lane = l);
    }
    const t = lane.ticket();
    try {
      return await this.#call(id, method, value, options, lane, t, timeoutMs, deadline);
    } finally {
      lane.leave(t);
      if (lane.idle && this.#lanes.get(id) === lane) this.#lanes.delete(id);
    }
  }

  async #call(
    id: string,
    method: string,
    value: unknown,
    options: RequestOptions,
    lane: Lane,
    t: Ticket,
    timeoutMs: number,
    deadline: number,
  ): Promise<unknown> {
    const what = {
      actor: id,
      method,
      timeoutMs,
      inc: 0,
      node: undefined as string | undefined,
      idempotent: options.idempotent ?? false,
    };
    this.stats.calls++;
    const started = Date.now();
    const hold = () =>
      lane.hold(
        t,
        (fail) => this.deadlines.add(deadline, fail),
        // Never sent, or refused each time: never queued, up to the deadline.
        () => new MailboxFullError(id, lane.capacity),
        options.signal,
        () => new CallCancelledError(id, method),
      );
    for (;;) {
      const e = this.#dir.actor(id);
      if (!e) {
        lane.release(t);
        // A ref can arrive (in a message) before the news of the actor's start: give the
        // directory a couple of heartbeats to catch up before calling it unknown.
        const until = Math.min(deadline, started + LOOKUP_GRACE_MS);
        if (options.failFast || Date.now() >= until) throw new ActorNotFoundError(id);
        await this.#waitChange(id, until, what, options.signal, deadline);
        continue;
      }
      if (e.state === "gone") throw new ActorDiedError(id, e.reason ?? "stopped", e.detail);
      if (e.state !== "up") {
        lane.release(t);
        if (options.failFast) throw new ActorDiedError(id, e.reason ?? "node", "it is restarting");
        await this.#waitChange(id, deadline, what, options.signal);
        continue;
      }
      if (e.info.mailbox !== undefined) lane.capacity = e.info.mailbox;
      if (!lane.tryAdmit(t)) {
        // Held back: the actor's mailbox was full lately, or calls made before this one are.
        if (options.failFast) throw new MailboxFullError(id, lane.capacity);
        await hold();
        continue; // let out: look the actor up again, then send
      }
      what.inc = e.info.inc;
      what.node = e.info.node;
      const remaining = Math.max(1, deadline - Date.now());
      lane.sending(t);
      let o: Outcome;
      try {
        o = await this.#exchange(
          this.#subjects.actor(id),
          // `r`: this call may go out again; the actor runs it once (runtime/instance.ts).
          {
            k: "call",
            m: method,
            t: remaining,
            i: e.info.inc,
            q: t.epoch,
            ...(what.idempotent ? { r: 1 } : {}),
          },
          value,
          deadline,
          what,
          options.signal,
        );
      } catch (err) {
        lane.returned(t, "other");
        throw err;
      }
      if (o.kind === "noresp") {
        lane.returned(t, "other");
        // Not subscribed (yet or any more): the directory will learn why shortly.
        if (options.failFast) throw new ActorDiedError(id, "node", "it is not reachable");
        await this.#waitChange(
          id,
          Math.min(deadline, Date.now() + 100),
          what,
          options.signal,
          deadline,
        );
        continue;
      }
      const meta = o.m.meta;
      if (meta.k === "ok") {
        lane.returned(t, "answered");
        return o.m.value;
      }
      const w = meta.e as WireError | undefined;
      if (w?.code === "MAILBOX_FULL") {
        // Refused, so not queued: it goes back in line, ahead of every later call.
        lane.returned(t, "refused");
        this.stats.refused++;
        lane.capacity = Number(w.data?.capacity);
        if (options.failFast) throw errorOfReply(w, id, method, options.errors, options.where);
        if (Date.now() >= deadline) throw new MailboxFullError(id, lane.capacity);
        await hold(); // at once: the lane resumes only once it is back in line
        continue;
      }
      if (w?.code === "STALE_INCARNATION") {
        lane.returned(t, "other");
        await this.#waitChange(
          id,
          Math.min(deadline, Date.now() + 100),
          what,
          options.signal,
          deadline,
        );
        continue;
      }
      lane.returned(t, "answered");
      throw errorOfReply(w, id, method, options.errors, options.where);
    }
  }

  /** A plain request to a runtime endpoint (node control); the reply's value or its typed error. */
  async request(
    subject: string,
    meta: Meta,
    value: unknown,
    what: { actor: string; method: string },
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<unknown> {
    const o = await this.#exchange(
      subject,
      meta,
      value,
      Date.now() + timeoutMs,
      { ...what, timeoutMs },
      signal,
    );
    if (o.kind === "noresp") throw new ActorNotFoundError(what.actor);
    if (o.m.meta.k === "ok") return o.m.value;
    throw errorOfReply(o.m.meta.e, what.actor, what.method);
  }

  async #waitChange(
    id: string,
    until: number,
    what: { actor: string; method: string; timeoutMs: number },
    signal?: AbortSignal,
    deadline = until,
  ) {
    if (Date.now() >= deadline) throw new CallTimeoutError(what.actor, what.method, what.timeoutMs);
    if (signal?.aborted) throw new CallCancelledError(what.actor, what.method);
    const ac = new AbortController();
    const onAbort = () => ac.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    const timer = setTimeout(() => ac.abort(), Math.max(0, until - Date.now()));
    try {
      await this.#dir.changed(id, ac.signal);
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
    if (signal?.aborted) throw new CallCancelledError(what.actor, what.method);
    if (Date.now() >= deadline) throw new CallTimeoutError(what.actor, what.method, what.timeoutMs);
    if (this.#closed) throw new SystemClosedError("the system is shut down");
  }

  /** Fails every pending request and stops routing replies. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#off?.();
    this.#sub?.unsubscribe();
    for (const p of [...this.#pending.values()]) {
      p.reject(new SystemClosedError("the system is shut down"));
    }
    for (const lane of this.#lanes.values()) {
      lane.close(new SystemClosedError("the system is shut down"));
    }
    this.#lanes.clear();
    this.#inbox.clear();
    this.deadlines.clear();
  }
}

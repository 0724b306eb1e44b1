/**
 * One running actor instance: its state, its bounded mailbox, one call at a time.
 *
 * Calls are queued in arrival order and run one after another. A full mailbox refuses a call at
 * once, without queueing it, so its caller may send it again (runtime/flow.ts). To keep each
 * caller's calls in order, a refusal also blocks that caller: every later call of it that carries
 * the refused call's epoch (`q`) or an older one is refused too, room or not, until the caller
 * sends under a newer epoch (the refused call first). Every call carries its timeout: a call still
 * queued at its deadline is dropped, a running one sees its `signal` abort and its late result is
 * discarded. Stopping fails every queued call.
 *
 * A call that its caller may send again (an idempotent call, `r` in its meta: it goes out again
 * when a connection on its way reconnected) runs at most once: its reply subject, unique per call,
 * names it. A copy that arrives while the call is queued or running is dropped (its answer goes to
 * the same subject), one that arrives after it is answered gets the same answer again, up to the
 * call's deadline. This check comes before the mailbox's, so a copy is never refused either: a
 * refusal would tell the caller that the call never ran.
 * @module
 */
import type { Msg, NatsConnection, Subscription } from "@nats-io/nats-core";
import type { ActorContext, AnyActorDef, CallContext, MethodSpec, Schema } from "./actor.ts";
import {
  ActorDiedError,
  ActorInitError,
  CallCancelledError,
  CallTimeoutError,
  type DeathReason,
  FrameError,
  MailboxFullError,
  SchemaError,
  StaleIncarnationError,
  toWireError,
  UnknownMethodError,
  type WireError,
} from "./errors.ts";
import { type ActorInfo, type ActorLoad, issuesOf } from "./protocol.ts";
import { declaredWire } from "./declared_errors.ts";
import type { TrafficStats } from "./caller.ts";
import type { Deadlines } from "./deadlines.ts";
import { encodeFrame } from "./codec.ts";
import { encode, FrameInbox, type Incoming, publish, publishFrame, send } from "./wire.ts";

/** What an instance needs from the process hosting it. */
export interface InstanceEnv {
  nc: NatsConnection;
  subject: string;
  /** Builds the context handed to `create`, `close` and handlers. */
  context(info: ActorInfo, stopped: AbortSignal): ActorContext;
  /** Largest frame accepted in one call (memory bound against rogue senders). */
  maxFrameBytes: number;
  /** The process's shared call deadlines. */
  deadlines: Deadlines;
  /** The process's traffic counters (calls received and replies sent count too). */
  stats: TrafficStats;
}

interface Call {
  method: string;
  value: unknown;
  reply: string;
  deadline: number;
  timeoutMs: number;
  ac?: AbortController;
  done: boolean;
  /** Its caller may send it again (idempotent): remembered by its reply subject. */
  resendable: boolean;
  /** Its answer as sent, kept for a copy of the call that arrives later (resendable only). */
  answer?: Uint8Array;
}

/** How long a caller's block is kept after its last refused call: its calls in flight arrive
 * within milliseconds of each other, so only a caller that went away leaves one this old. */
const BLOCK_KEEP_MS = 60_000;

/** Most answered calls remembered at once, and most bytes of their answers kept: past either
 * the oldest are forgotten first (a copy of one of those would run again). */
const SEEN_MAX_CALLS = 4096;
const SEEN_MAX_BYTES = 256 * 1024 * 1024;

/** A hosted actor. */
export class ActorInstance {
  readonly info: ActorInfo;
  readonly #def: AnyActorDef;
  readonly #env: InstanceEnv;
  readonly #mailbox: number;
  readonly #life = new AbortController();
  readonly #inbox: FrameInbox;
  readonly #queue: Call[] = [];
  #ctx!: ActorContext;
  #state: unknown;
  #sub?: Subscription;
  #running?: Call;
  #runningDone?: Promise<void>;
  #stopping = false;
  #calls = 0;
  /** Callers (by reply inbox) refused lately: the epoch refused, and when last. */
  readonly #blocked = new Map<string, { epoch: number; at: number }>();
  #swept = 0;
  /** Resendable calls by reply subject, from arrival until their deadline (arrival order). */
  readonly #seen = new Map<string, Call>();
  #seenBytes = 0;
  #seenSwept = 0;

  constructor(env: InstanceEnv, def: AnyActorDef, info: ActorInfo, mailbox: number) {
    this.#env = env;
    this.#def = def;
    this.info = info;
    this.#mailbox = mailbox;
    this.#inbox = new FrameInbox(env.maxFrameBytes);
  }

  /** Aborted when this instance stops. */
  get stopped(): AbortSignal {
    return this.#life.signal;
  }

  /** Validates the input, runs the constructor, then starts taking calls. */
  async start(input: unknown, initTimeoutMs: number): Promise<void> {
    const parsed = this.#def.init.safeParse(input);
    if (!parsed.success) {
      throw new SchemaError(this.#def.name, "init", issuesOf(parsed.error), true);
    }
    this.#ctx = this.#env.context(this.info, this.#life.signal);
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const created = Promise.resolve(this.#def.create(parsed.data, this.#ctx));
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`constructor did not finish within ${initTimeoutMs} ms`)),
          initTimeoutMs,
        );
      });
      this.#state = await Promise.race([created, timeout]);
    } catch (e) {
      this.#life.abort(new ActorDiedError(this.info.id, "init"));
      throw new ActorInitError(this.info.id, e instanceof Error ? e : new Error(String(e)));
    } finally {
      clearTimeout(timer);
    }
    this.#sub = this.#env.nc.subscribe(this.#env.subject, {
      callback: (err, msg) => {
        if (!err) this.#onMessage(msg);
      },
    });
  }

  #onMessage(msg: Msg) {
    let m: Incoming | undefined;
    try {
      m = this.#inbox.accept(msg);
    } catch (e) {
      if (msg.reply) {
        this.#replyError(
          msg.reply,
          toWireError(e instanceof FrameError ? e : new FrameError(String(e))),
        );
      }
      return;
    }
    if (!m) return;
    this.#env.stats.bytesReceived += m.bytes;
    const reply = m.reply;
    if (!reply) return;
    const meta = m.meta;
    if (meta.k === "cancel") return this.#cancel(reply);
    if (meta.k !== "call") return;
    const inc = Number(meta.i);
    if (inc > this.info.inc) return; // a newer incarnation exists: this one must stay silent
    if (inc < this.info.inc && inc >= 0) {
      return this.#replyError(
        reply,
        new StaleIncarnationError(this.info.id, this.info.inc).toWire(),
      );
    }
    const resendable = meta.r === 1;
    if (resendable) {
      const seen = this.#seen.get(reply);
      if (seen) return this.#again(seen);
    }
    const method = String(meta.m);
    const timeoutMs = Number(meta.t) > 0 ? Number(meta.t) : 30_000;
    if (this.#stopping) {
      return this.#replyError(reply, new ActorDiedError(this.info.id, "stopped").toWire());
    }
    if (!this.#admits(reply, meta.q)) {
      // Not queued: the caller may send it again, which is what flow control does.
      return this.#replyError(reply, new MailboxFullError(this.info.id, this.#mailbox).toWire());
    }
    const call: Call = {
      method,
      value: m.value,
      reply,
      deadline: Date.now() + timeoutMs,
      timeoutMs,
      done: false,
      resendable,
    };
    if (resendable) this.#remember(call);
    this.#queue.push(call);
    if (!this.#running) this.#runningDone = this.#drain();
  }

  /**
   * A copy of a call already taken: queued or running, its answer is still to come on the same
   * subject; answered, the answer goes out again; dropped (deadline, cancel), nothing.
   */
  #again(call: Call) {
    const a = call.answer;
    if (!a || !call.done) return;
    publishFrame(this.#env.nc, call.reply, a).then(
      (n) => this.#env.stats.bytesSent += n,
      () => {},
    );
  }

  /** Remembers a resendable call until its deadline, forgetting those past theirs. */
  #remember(call: Call) {
    const now = Date.now();
    this.#seen.set(call.reply, call);
    const within = this.#seen.size <= SEEN_MAX_CALLS && this.#seenBytes <= SEEN_MAX_BYTES;
    if (within && now - this.#seenSwept < 1000) return;
    this.#seenSwept = now;
    for (const [k, c] of this.#seen) {
      const over = this.#seen.size > SEEN_MAX_CALLS || this.#seenBytes > SEEN_MAX_BYTES;
      if (now < c.deadline && !over) continue;
      if (over && !c.done) continue; // only answered calls are forgotten early
      this.#forget(k, c);
    }
  }

  #forget(reply: string, c: Call) {
    this.#seen.delete(reply);
    if (c.answer) this.#seenBytes -= c.answer.byteLength;
    c.answer = undefined;
  }

  /**
   * Whether a call with reply subject `reply` and epoch `q` may be queued: there is room, and its
   * caller is not blocked at that epoch. A refusal blocks the caller at the call's epoch.
   */
  #admits(reply: string, q: unknown): boolean {
    const full = this.#queue.length >= this.#mailbox;
    if (typeof q !== "number") return !full; // a caller without flow control
    const caller = reply.slice(0, reply.lastIndexOf("."));
    const now = Date.now();
    const b = this.#blocked.get(caller);
    if (b && q <= b.epoch) {
      b.at = now;
      return false;
    }
    if (b) this.#blocked.delete(caller);
    if (!full) return true;
    this.#blocked.set(caller, { epoch: q, at: now });
    if (now - this.#swept > BLOCK_KEEP_MS / 4) {
      this.#swept = now;
      for (const [k, v] of this.#blocked) if (now - v.at > BLOCK_KEEP_MS) this.#blocked.delete(k);
    }
    return false;
  }

  async #drain() {
    while (this.#queue.length > 0 && !this.#stopping) {
      const call = this.#queue.shift()!;
      if (Date.now() >= call.deadline) continue; // its caller has already given up
      this.#running = call;
      await this.#run(call);
      this.#running = undefined;
      this.#calls++;
    }
  }

  async #run(call: Call) {
    const spec =
      (this.#def.methods as Record<string, MethodSpec<unknown, Schema, Schema>>)[call.method];
    const where = `${this.#def.name}.${call.method}`;
    if (!spec || !Object.hasOwn(this.#def.methods, call.method)) {
      return this.#finish(
        call,
        undefined,
        new UnknownMethodError(this.info.id, call.method).toWire(),
      );
    }
    const input = spec.input.safeParse(call.value);
    if (!input.success) {
      return this.#finish(
        call,
        undefined,
        new SchemaError(where, "input", issuesOf(input.error), true).toWire(),
      );
    }
    const ac = new AbortController();
    call.ac = ac;
    const onStop = () => ac.abort(this.#life.signal.reason);
    this.#life.signal.addEventListener("abort", onStop, { once: true });
    const cancelDeadline = this.#env.deadlines.add(
      call.deadline,
      () => ac.abort(new CallTimeoutError(this.info.id, call.method, call.timeoutMs)),
    );
    const ctx: CallContext = { ...this.#ctx, signal: ac.signal, method: call.method };
    try {
      const out = await spec.handler(this.#state, input.data, ctx);
      const parsed = spec.output.safeParse(out);
      if (!parsed.success) {
        await this.#finish(
          call,
          undefined,
          new SchemaError(where, "output", issuesOf(parsed.error), true).toWire(),
        );
      } else {
        await this.#finish(call, parsed.data, undefined);
      }
    } catch (e) {
      // Exceptions of the actor's own code always arrive as RemoteError, even when they are
      // runtime errors of a nested call: the caller must not mistake them for its own. Those of
      // a class the actor declares also name it, with their fields: the caller re-creates them.
      const w = toWireError(e);
      const declared = declaredWire(e, this.#def.errors);
      await this.#finish(call, undefined, {
        code: "REMOTE",
        name: "RemoteError",
        message: w.message,
        data: {
          remoteName: w.name,
          remoteMessage: w.message,
          remoteStack: w.stack,
          remoteCode: w.code,
          ...(declared ? { declared } : {}),
        },
      });
    } finally {
      cancelDeadline();
      this.#life.signal.removeEventListener("abort", onStop);
    }
  }

  async #finish(call: Call, value: unknown, error: WireError | undefined) {
    if (call.done) return;
    call.done = true;
    if (call.ac?.signal.aborted && Date.now() >= call.deadline) return; // caller timed out
    try {
      const meta = error ? { k: "err", e: error } : { k: "ok" };
      const v = error ? null : value;
      const e = encode(this.#env.nc, meta, v);
      if (call.resendable && this.#seen.get(call.reply) === call) {
        // Parts point into the value's own arrays, which the actor may reuse: keep a copy.
        call.answer = e.frame ?? encodeFrame(meta, v);
        this.#seenBytes += e.bytes;
      }
      this.#env.stats.bytesSent += await publish(this.#env.nc, call.reply, e);
    } catch (e) {
      // The value could not be encoded (e.g. a Float64Array): tell the caller why.
      if (!error) {
        this.#replyError(call.reply, toWireError(e));
      }
    }
  }

  #replyError(reply: string, error: WireError) {
    send(this.#env.nc, reply, { k: "err", e: error }, null).catch(() => {});
  }

  #cancel(reply: string) {
    const i = this.#queue.findIndex((c) => c.reply === reply);
    if (i >= 0) {
      this.#queue.splice(i, 1);
      return;
    }
    const r = this.#running;
    if (r && r.reply === reply) {
      r.ac?.abort(new CallCancelledError(this.info.id, r.method));
      r.done = true;
    }
  }

  /** Calls waiting in the mailbox (not counting the running one). */
  get queued(): number {
    return this.#queue.length;
  }

  /** Its mailbox and call counters, as heartbeats report them. */
  get load(): ActorLoad {
    return {
      inc: this.info.inc,
      queued: this.#queue.length,
      busy: this.#running !== undefined,
      calls: this.#calls,
    };
  }

  /**
   * Stops the instance: queued calls and the running one fail with ActorDiedError, the running
   * call's signal aborts (a graceful stop waits up to `graceMs` for its handler to return), then
   * `close` runs.
   */
  async stop(mode: "stop" | "kill", reason: DeathReason, graceMs: number): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    const died = new ActorDiedError(this.info.id, reason);
    this.#sub?.unsubscribe();
    this.#sub = undefined;
    this.#seen.clear();
    this.#seenBytes = 0;
    for (const c of this.#queue.splice(0)) {
      c.done = true;
      this.#replyError(c.reply, died.toWire());
    }
    this.#life.abort(died);
    const running = this.#running;
    if (running && this.#runningDone) {
      // Its caller learns now; whatever the handler still returns is discarded.
      if (!running.done) {
        running.done = true;
        this.#replyError(running.reply, died.toWire());
      }
      // A graceful stop lets the handler wind down before `close` frees what it may be using.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.#runningDone,
        new Promise((r) => timer = setTimeout(r, mode === "stop" ? graceMs : 0)),
      ]);
      clearTimeout(timer);
    }
    if (this.#def.close && this.#ctx) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        await Promise.race([
          Promise.resolve(this.#def.close(this.#state, this.#ctx)),
          new Promise((r) => timer = setTimeout(r, Math.max(graceMs, 1000))),
        ]);
      } catch (e) {
        console.error(`actor ${this.info.id}: close failed:`, e);
      } finally {
        clearTimeout(timer);
      }
    }
    this.#inbox.clear();
  }
}

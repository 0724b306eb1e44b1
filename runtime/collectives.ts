/**
 * Collectives on subjects: broadcast, gather, all-gather.
 *
 * Values are frames like call inputs (tensors travel as raw bytes, big ones are chunked), so a
 * driver can gather K workers' tensors on `<ns>.step.<t>.delta.*` and broadcast them all in one
 * message that the NATS server fans out. Core NATS keeps no messages, so a receiver must be
 * subscribed before the sender publishes: `gather` resolves only once its subscription is
 * registered with the server, and `allGather` lets late participants fetch what they missed.
 * @module
 */
import { createInbox, type Msg, type NatsConnection, type Subscription } from "@nats-io/nats-core";
import type { z } from "zod";
import type { TrafficStats } from "./caller.ts";
import { encodeFrame } from "./codec.ts";
import {
  CallCancelledError,
  CollectiveTimeoutError,
  FrameError,
  InvalidArgumentError,
} from "./errors.ts";
import { FrameInbox, type Incoming, isNoResponders, publishFrame, send } from "./wire.ts";

/** Options of a receiving collective. */
export interface ReceiveOptions<S extends z.ZodType | undefined> {
  /** Each value is parsed with it; values that fail are counted in `rejected` and skipped. */
  schema?: S;
  /** Default 30 000 ms. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /**
   * Largest frame accepted, in bytes; a message (or a part announcing a frame) beyond it is
   * refused before anything is allocated. Default: the system's limit.
   */
  maxFrameBytes?: number;
}

/** Options of {@link Collectives.gather}. */
export interface GatherOptions<S extends z.ZodType | undefined> extends ReceiveOptions<S> {
  /**
   * Hold each rank's parts until {@link Gathering.verify} says which one is genuine (e.g. by a
   * digest its sender returned over a private reply), so that a part published by someone else
   * on the same subject cannot take the rank. Without it the first well-formed part wins.
   */
  verified?: boolean;
  /** Parts held per rank while it is not verified yet; older ones are dropped. Default 4. */
  maxCandidates?: number;
}

/** Options of {@link Collectives.subscribe}. */
export interface SubscribeOptions<S extends z.ZodType | undefined> {
  schema?: S;
  maxFrameBytes?: number;
  /** Values kept while nobody reads; the oldest are dropped (and counted) beyond it. Default 256. */
  maxQueue?: number;
}

type Out<S> = S extends z.ZodType ? z.output<S> : unknown;

/** A gather in progress: subscribed, waiting for `count` parts. */
export interface Gathering<T> {
  /** The parts, indexed by the last token of their subject. */
  readonly result: Promise<T[]>;
  /**
   * Messages refused: malformed frames, schema failures, ranks out of range, parts that failed
   * their rank's check, and (unverified gathers) second parts of a rank.
   */
  readonly rejected: number;
  /** Verified gathers: parts that passed their rank's check after the rank was filled (resends). */
  readonly duplicates: number;
  /** Ranks still without a part. */
  missing(): number[];
  /**
   * Verified gathers: rank `k` takes the first part, held or still to come, that passes `check`;
   * held parts that fail it are counted as rejected.
   */
  verify(k: number, check: (value: T) => boolean): void;
  /** Stops waiting (the result rejects with CallCancelledError). */
  cancel(): void;
}

/** A subscription to broadcast values. */
export interface Receiver<T> extends AsyncIterable<{ subject: string; value: T }> {
  /** The next value (waits up to `timeoutMs`). */
  next(timeoutMs?: number): Promise<{ subject: string; value: T }>;
  /** Messages dropped: malformed frames, schema failures, values pushed out of a full queue. */
  readonly rejected: number;
  close(): void;
}

/** Collective operations over one NATS connection. */
export class Collectives {
  readonly #nc: NatsConnection;
  readonly #maxFrameBytes: number;
  readonly #stats?: TrafficStats;
  readonly #inboxPrefix?: string;

  /** `inboxPrefix`: where this connection may receive replies, when not `_INBOX`. */
  constructor(
    nc: NatsConnection,
    maxFrameBytes: number,
    stats?: TrafficStats,
    inboxPrefix?: string,
  ) {
    this.#nc = nc;
    this.#maxFrameBytes = maxFrameBytes;
    this.#stats = stats;
    this.#inboxPrefix = inboxPrefix;
  }

  /** Publishes `value` once on `subject`; every subscriber gets it. Returns the frame's bytes. */
  async broadcast(subject: string, value: unknown): Promise<number> {
    const n = await send(this.#nc, subject, { k: "bc" }, value);
    if (this.#stats) this.#stats.bytesSent += n;
    return n;
  }

  /** Receives values published on `subject` (wildcards allowed); registered once this resolves. */
  async subscribe<S extends z.ZodType | undefined = undefined>(
    subject: string,
    options: SubscribeOptions<S> = {},
  ): Promise<Receiver<Out<S>>> {
    const inbox = new FrameInbox(options.maxFrameBytes ?? this.#maxFrameBytes);
    const maxQueue = options.maxQueue ?? 256;
    const queue: { subject: string; value: Out<S> }[] = [];
    const waiters: ((v: { subject: string; value: Out<S> } | Error) => void)[] = [];
    let rejected = 0;
    let closed = false;
    const stats = this.#stats;
    const sub = this.#nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err) return;
        const v = accept<S>(inbox, msg, options.schema);
        if (v === undefined) return;
        if (v instanceof Error) {
          rejected++;
          return;
        }
        if (stats) stats.bytesReceived += v.bytes;
        const item = { subject: msg.subject, value: v.value };
        const w = waiters.shift();
        if (w) return w(item);
        queue.push(item);
        if (queue.length > maxQueue) {
          queue.shift();
          rejected++;
        }
      },
    });
    await this.#nc.flush();
    const next = (timeoutMs = 30_000) =>
      new Promise<{ subject: string; value: Out<S> }>((resolve, reject) => {
        const item = queue.shift();
        if (item) return resolve(item);
        if (closed) return reject(new CallCancelledError(subject, "receive"));
        const timer = setTimeout(() => {
          const i = waiters.indexOf(done);
          if (i >= 0) waiters.splice(i, 1);
          reject(new CollectiveTimeoutError(subject, []));
        }, timeoutMs);
        const done = (v: { subject: string; value: Out<S> } | Error) => {
          clearTimeout(timer);
          if (v instanceof Error) reject(v);
          else resolve(v);
        };
        waiters.push(done);
      });
    return {
      next,
      get rejected() {
        return rejected;
      },
      close() {
        if (closed) return;
        closed = true;
        sub.unsubscribe();
        inbox.clear();
        for (const w of waiters.splice(0)) w(new CallCancelledError(subject, "receive"));
      },
      async *[Symbol.asyncIterator]() {
        while (!closed) {
          try {
            yield await next(2 ** 31 - 1);
          } catch (e) {
            if (closed) return;
            throw e;
          }
        }
      },
    };
  }

  /**
   * Starts gathering `count` parts published on `<subject>.<k>` for k in 0..count-1. Resolves
   * once subscribed (trigger the senders after that); the parts arrive in `result`.
   */
  async gather<S extends z.ZodType | undefined = undefined>(
    subject: string,
    count: number,
    options: GatherOptions<S> = {},
  ): Promise<Gathering<Out<S>>> {
    if (!Number.isInteger(count) || count < 1) {
      throw new InvalidArgumentError(`gather needs a positive part count, got ${count}`);
    }
    const maxFrame = options.maxFrameBytes ?? this.#maxFrameBytes;
    // Room for every rank's transfer at once; a flood of bogus transfers evicts older ones
    // rather than growing without bound.
    const inbox = new FrameInbox(maxFrame, count * maxFrame);
    const verified = options.verified ?? false;
    const maxCandidates = Math.max(1, options.maxCandidates ?? 4);
    const parts = new Array<Out<S>>(count);
    const have = new Uint8Array(count);
    const held: Out<S>[][] = Array.from({ length: count }, () => []);
    const checks: ((v: Out<S>) => boolean)[] = new Array(count);
    let got = 0;
    const counts = { rejected: 0, duplicates: 0 };
    // Assigned below; `settle` may run before either exists.
    const live: { sub?: Subscription; timer?: ReturnType<typeof setTimeout> } = {};
    let settle!: (e?: Error) => void;
    let settled = false;
    const stats = this.#stats;
    const result = new Promise<Out<S>[]>((resolve, reject) => {
      settle = (e?: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(live.timer);
        options.signal?.removeEventListener("abort", onAbort);
        live.sub?.unsubscribe();
        inbox.clear();
        held.forEach((h) => h.length = 0);
        if (e) reject(e);
        else resolve(parts);
      };
    });
    // A gather given up on (cancelled, or its caller failed first) need not be awaited.
    result.catch(() => {});
    const take = (k: number, v: Out<S>) => {
      parts[k] = v;
      have[k] = 1;
      held[k].length = 0;
      if (++got === count) settle();
    };
    const offer = (k: number, v: Out<S>) => {
      const check = checks[k];
      if (have[k]) {
        if (verified && check?.(v)) counts.duplicates++;
        else counts.rejected++;
      } else if (!verified) {
        take(k, v);
      } else if (check) {
        if (check(v)) take(k, v);
        else counts.rejected++;
      } else {
        held[k].push(v);
        if (held[k].length > maxCandidates) {
          held[k].shift();
          counts.rejected++;
        }
      }
    };
    const onAbort = () => settle(new CallCancelledError(subject, "gather"));
    const prefix = `${subject}.`;
    live.sub = this.#nc.subscribe(`${subject}.*`, {
      callback: (err, msg) => {
        if (err) return;
        const k = Number(msg.subject.slice(prefix.length));
        const v = accept<S>(inbox, msg, options.schema);
        if (v === undefined) return;
        if (v instanceof Error || !Number.isInteger(k) || k < 0 || k >= count) {
          counts.rejected++;
          return;
        }
        if (stats) stats.bytesReceived += v.bytes;
        offer(k, v.value);
      },
    });
    live.timer = setTimeout(() => {
      const missing = [...have.keys()].filter((i) => !have[i]);
      settle(new CollectiveTimeoutError(subject, missing));
    }, options.timeoutMs ?? 30_000);
    options.signal?.addEventListener("abort", onAbort, { once: true });
    if (options.signal?.aborted) onAbort();
    await this.#nc.flush();
    return {
      result,
      get rejected() {
        return counts.rejected;
      },
      get duplicates() {
        return counts.duplicates;
      },
      missing: () => [...have.keys()].filter((i) => !have[i]),
      verify: (k, check) => {
        if (!Number.isInteger(k) || k < 0 || k >= count) {
          throw new InvalidArgumentError(`gather: rank ${k} of ${count} is invalid`);
        }
        checks[k] = check;
        if (have[k] || settled) return;
        let first: Out<S> | undefined;
        let found = false;
        for (const v of held[k].splice(0)) {
          if (!check(v)) counts.rejected++;
          else if (found) counts.duplicates++;
          else {
            first = v;
            found = true;
          }
        }
        if (found) take(k, first as Out<S>);
      },
      cancel: onAbort,
    };
  }

  /** Publishes part `k` of a gather on `<subject>.<k>`. */
  contribute(subject: string, k: number, value: unknown): Promise<number> {
    return this.broadcast(`${subject}.${k}`, value);
  }

  /**
   * All-gather among `size` participants: each passes its `rank` and value and gets every
   * participant's value, in rank order. Also a barrier: it returns once every participant has
   * every value, so no one leaves while another still needs its part.
   */
  async allGather<S extends z.ZodType | undefined = undefined>(
    subject: string,
    rank: number,
    size: number,
    value: unknown,
    options: ReceiveOptions<S> = {},
  ): Promise<Out<S>[]> {
    if (
      !Number.isInteger(size) || size < 1 || !Number.isInteger(rank) || rank < 0 || rank >= size
    ) {
      throw new InvalidArgumentError(`allGather: rank ${rank} of size ${size} is invalid`);
    }
    const nc = this.#nc;
    const mine = encodeFrame({ k: "ag", r: rank }, value);
    const timeoutMs = options.timeoutMs ?? 30_000;
    const parts = new Array<Out<S>>(size);
    const have = new Uint8Array(size);
    const done = new Uint8Array(size);
    let got = 0;
    let doneCount = 0;
    const dataInbox = new FrameInbox(this.#maxFrameBytes);
    const fetchInbox = new FrameInbox(this.#maxFrameBytes);
    let wake!: () => void;
    let changed = new Promise<void>((r) => wake = r);
    const poke = () => {
      wake();
      changed = new Promise<void>((r) => wake = r);
    };
    const take = (msg: Msg, inbox: FrameInbox) => {
      const v = accept<S>(inbox, msg, options.schema);
      if (v === undefined || v instanceof Error) return;
      const r = Number(v.meta.r);
      if (!Number.isInteger(r) || r < 0 || r >= size || have[r]) return;
      parts[r] = v.value;
      have[r] = 1;
      got++;
      poke();
    };
    const subs: Subscription[] = [
      nc.subscribe(`${subject}.data.*`, {
        callback: (e, m) => {
          if (!e) take(m, dataInbox);
        },
      }),
      nc.subscribe(`${subject}.get.${rank}`, {
        callback: (e, m) => {
          if (!e && m.reply) publishFrame(nc, m.reply, mine).catch(() => {});
        },
      }),
      nc.subscribe(`${subject}.done.*`, {
        callback: (e, m) => {
          const r = Number(m.subject.slice(`${subject}.done.`.length));
          if (!e && Number.isInteger(r) && r >= 0 && r < size && !done[r]) {
            done[r] = 1;
            doneCount++;
            poke();
          }
        },
      }),
    ];
    const fetchPrefix = createInbox(this.#inboxPrefix);
    subs.push(nc.subscribe(`${fetchPrefix}.*`, {
      callback: (e, m) => {
        if (!e && !isNoResponders(m)) take(m, fetchInbox);
      },
    }));
    const deadline = Date.now() + timeoutMs;
    try {
      await nc.flush();
      await publishFrame(nc, `${subject}.data.${rank}`, mine);
      if (this.#stats) this.#stats.bytesSent += mine.byteLength;
      let announced = false;
      while (got < size || doneCount < size) {
        if (options.signal?.aborted) throw new CallCancelledError(subject, "allGather");
        if (Date.now() > deadline) {
          const missing = [...have.keys()].filter((i) => !have[i] || !done[i]);
          throw new CollectiveTimeoutError(subject, missing);
        }
        if (got === size && !announced) {
          announced = true;
          nc.publish(`${subject}.done.${rank}`);
        }
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([changed, new Promise((r) => timer = setTimeout(r, 100))]);
        clearTimeout(timer);
        if (got < size) {
          // Parts published before our subscription existed: ask their owners directly.
          for (let r = 0; r < size; r++) {
            if (!have[r]) {
              nc.publish(`${subject}.get.${r}`, undefined, { reply: `${fetchPrefix}.${r}` });
            }
          }
        }
      }
      return parts;
    } finally {
      for (const s of subs) s.unsubscribe();
      dataInbox.clear();
      fetchInbox.clear();
    }
  }
}

function accept<S extends z.ZodType | undefined>(
  inbox: FrameInbox,
  msg: Msg,
  schema: S | undefined,
): (Incoming & { value: Out<S> }) | Error | undefined {
  let m: Incoming | undefined;
  try {
    m = inbox.accept(msg);
  } catch (e) {
    return e instanceof Error ? e : new FrameError(String(e));
  }
  if (!m) return undefined;
  if (!schema) return m as Incoming & { value: Out<S> };
  const p = schema.safeParse(m.value);
  if (!p.success) return new Error(p.error.message);
  return { ...m, value: p.data as Out<S> };
}

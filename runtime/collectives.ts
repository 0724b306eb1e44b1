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
}

type Out<S> = S extends z.ZodType ? z.output<S> : unknown;

/** A gather in progress: subscribed, waiting for `count` parts. */
export interface Gathering<T> {
  /** The parts, indexed by the last token of their subject. */
  readonly result: Promise<T[]>;
  /** Messages dropped: malformed frames, schema failures, ranks out of range, duplicates. */
  readonly rejected: number;
  /** Stops waiting (the result rejects with CallCancelledError). */
  cancel(): void;
}

/** A subscription to broadcast values. */
export interface Receiver<T> extends AsyncIterable<{ subject: string; value: T }> {
  /** The next value (waits up to `timeoutMs`). */
  next(timeoutMs?: number): Promise<{ subject: string; value: T }>;
  /** Messages dropped: malformed frames and schema failures. */
  readonly rejected: number;
  close(): void;
}

/** Collective operations over one NATS connection. */
export class Collectives {
  readonly #nc: NatsConnection;
  readonly #maxFrameBytes: number;
  readonly #stats?: TrafficStats;

  constructor(nc: NatsConnection, maxFrameBytes: number, stats?: TrafficStats) {
    this.#nc = nc;
    this.#maxFrameBytes = maxFrameBytes;
    this.#stats = stats;
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
    options: Omit<ReceiveOptions<S>, "timeoutMs" | "signal"> = {},
  ): Promise<Receiver<Out<S>>> {
    const inbox = new FrameInbox(this.#maxFrameBytes);
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
        if (w) w(item);
        else queue.push(item);
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
    options: ReceiveOptions<S> = {},
  ): Promise<Gathering<Out<S>>> {
    if (!Number.isInteger(count) || count < 1) {
      throw new InvalidArgumentError(`gather needs a positive part count, got ${count}`);
    }
    const inbox = new FrameInbox(this.#maxFrameBytes);
    const parts = new Array<Out<S>>(count);
    const have = new Uint8Array(count);
    let got = 0;
    let rejected = 0;
    // Assigned below; `settle` may run before either exists.
    const live: { sub?: Subscription; timer?: ReturnType<typeof setTimeout> } = {};
    let settle!: (e?: Error) => void;
    const stats = this.#stats;
    const result = new Promise<Out<S>[]>((resolve, reject) => {
      settle = (e?: Error) => {
        clearTimeout(live.timer);
        options.signal?.removeEventListener("abort", onAbort);
        live.sub?.unsubscribe();
        inbox.clear();
        if (e) reject(e);
        else resolve(parts);
      };
    });
    const onAbort = () => settle(new CallCancelledError(subject, "gather"));
    const prefix = `${subject}.`;
    live.sub = this.#nc.subscribe(`${subject}.*`, {
      callback: (err, msg) => {
        if (err) return;
        const k = Number(msg.subject.slice(prefix.length));
        const v = accept<S>(inbox, msg, options.schema);
        if (v === undefined) return;
        if (v instanceof Error || !Number.isInteger(k) || k < 0 || k >= count || have[k]) {
          rejected++;
          return;
        }
        if (stats) stats.bytesReceived += v.bytes;
        parts[k] = v.value;
        have[k] = 1;
        if (++got === count) settle();
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
        return rejected;
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
    const fetchPrefix = createInbox();
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

/**
 * Flow control of one caller's calls to one actor: hold calls back while the actor's mailbox is
 * full, send them again, in order, as room frees up.
 *
 * An actor refuses a call when its bounded mailbox is full (the call is then not queued, so
 * sending it again is safe). A lane is what one process knows about one actor it calls: the
 * calls it has sent and not yet heard back from (in flight), the calls it holds back (held, in
 * call order), and how many it lets out at once (its window).
 *
 * Order: every call carries the lane's current epoch. Once the actor refuses one call of an
 * epoch, it refuses every later call of that caller with that epoch or an older one, room or
 * not (runtime/instance.ts): so no call overtakes one refused before it. The lane waits until
 * each call it had sent after the refused one has come back refused, then sends the held calls
 * again, lowest call number first, under a new epoch. NATS keeps the order of one connection's
 * messages, so the actor sees each caller's calls in the order they were made (as before for
 * calls whose frame is split into parts, and for calls sent again after a reconnection or while
 * the actor restarted: those were never ordered).
 *
 * Room: a lane resumes when one of its calls the actor had accepted is answered (the actor took
 * a call out of its mailbox). When the actor holds none of its calls (the mailbox is full of other
 * callers' calls), it probes after a backoff with jitter, 2 ms doubling to 500 ms.
 *
 * Window: a lane starts with 64 calls out at once and widens by one per answer (doubling every
 * round) until the actor first refuses one; then it shrinks to the calls the actor holds of this
 * caller, and widens by 1/window per answer (about one call per round of answers). It never
 * exceeds the actor's mailbox plus the running call (the directory knows each actor's mailbox):
 * a caller alone is never refused. So a caller
 * with thousands of calls finds the room it has without a burst of refusals, and without a
 * refusal per call after. Held calls wait on nothing but a promise: no polling, and no memory
 * beyond the call itself.
 * @module
 */

/** One call, as its lane tracks it. */
export interface Ticket {
  /** Order of the call within its lane. */
  readonly seq: number;
  /** The epoch it was last let out with; the actor sees it as the call's `q`. */
  epoch: number;
  /** Let out (in flight, or woken and about to be sent). */
  out: boolean;
  /** Woken from the held queue, not sent yet: no new call may go before it. */
  woken: boolean;
  /** Sent after the call whose refusal blocked the lane: it will be refused too. */
  doomed: boolean;
  /** Set while held: lets it out, or fails it. */
  wake?: () => void;
  fail?: (e: Error) => void;
  /** Removed from the held queue (answered by a deadline, a cancel or a shutdown). */
  gone?: boolean;
}

/** How a sent call came back. */
export type Return = "refused" | "answered" | "other";

/**
 * The window a lane starts with: enough to keep an actor busy across a round trip, and small
 * enough that callers that start together do not bury a mailbox in refusals (every call a caller
 * has out behind a refused one is refused too).
 */
const INITIAL_WINDOW = 64;
const BACKOFF_MIN_MS = 2;
const BACKOFF_MAX_MS = 500;

/** The state of one caller's calls to one actor. */
export class Lane {
  #seq = 0;
  /** Held calls, by `seq`, from `#head` on; gone ones are skipped lazily. */
  #held: Ticket[] = [];
  #head = 0;
  #heldLive = 0;
  readonly #inflight = new Set<Ticket>();
  #woken = 0;
  /** Calls let out at once before hearing back (see the module's doc). */
  #window = INITIAL_WINDOW;
  /** Whether the actor has refused a call yet: until then the window doubles every round. */
  #refusedOnce = false;
  #epoch: number;
  /** Set from the first refusal of an epoch until the lane sends again under a new one. */
  #block?: { seq: number; remaining: number; room: boolean };
  #timer?: ReturnType<typeof setTimeout>;
  #backoffs = 0;
  #closed = false;
  /** Calls of this lane not yet answered (in flight, held, or between the two). */
  live = 0;
  /** The actor's mailbox capacity, as the directory or its last refusal said; 0 if unknown. */
  #capacity = 0;
  /** The widest the window gets: more calls than the mailbox holds, plus the running one, can
   * only be refused. */
  #ceiling = Infinity;

  /**
   * `nextEpoch` hands out the caller's epochs (rising across all its lanes, so that a lane made
   * anew never reuses one an actor may still block); `onIdle` runs when a backoff ends with no
   * call left, so the caller can forget the lane.
   */
  constructor(readonly nextEpoch: () => number, readonly onIdle: () => void = () => {}) {
    this.#epoch = nextEpoch();
  }

  /** The actor's mailbox capacity, as the directory or its last refusal said; 0 if unknown. */
  get capacity(): number {
    return this.#capacity;
  }

  set capacity(n: number) {
    if (!(Number.isInteger(n) && n > 0) || n === this.#capacity) return;
    this.#capacity = n;
    this.#ceiling = n + 1;
    this.#window = Math.min(this.#window, this.#ceiling);
  }

  /** A new call, ordered after every call made before it. */
  ticket(): Ticket {
    this.live++;
    return { seq: ++this.#seq, epoch: 0, out: false, woken: false, doomed: false };
  }

  /** Whether the lane holds calls back now (nothing new may be sent at once). */
  get holding(): boolean {
    return this.#heldLive > 0 || this.#woken > 0 || this.#block !== undefined ||
      this.#inflight.size >= this.#window;
  }

  /** Lets `t` out at once when nothing is held and the window has room. */
  tryAdmit(t: Ticket): boolean {
    if (t.out) return true;
    if (this.holding) return false;
    this.#letOut(t);
    return true;
  }

  /**
   * Holds `t` back until the lane lets it out. `expire` is armed for the call's deadline and
   * returns the cancel; `signal` cancels it. Whatever fails it rejects the promise.
   */
  hold(
    t: Ticket,
    expire: (fail: () => void) => () => void,
    deadlineError: () => Error,
    signal: AbortSignal | undefined,
    cancelError: () => Error,
  ): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const done = () => {
        disarm();
        signal?.removeEventListener("abort", onAbort);
        t.wake = undefined;
        t.fail = undefined;
      };
      const onAbort = () => t.fail?.(cancelError());
      t.gone = false;
      t.wake = () => {
        done();
        resolve();
      };
      t.fail = (e) => {
        done();
        t.gone = true;
        this.#heldLive--;
        reject(e);
        this.#pump(); // it may have been the one holding the others back
      };
      this.#insert(t);
      const disarm = expire(() => t.fail?.(deadlineError()));
      signal?.addEventListener("abort", onAbort, { once: true });
      if (signal?.aborted) return t.fail(cancelError());
      // Not from here: a call woken before its caller awaits this promise would go on after
      // the later calls woken in the same pass, and be sent after them.
      queueMicrotask(() => {
        this.#maybeResume();
        this.#pump();
      });
    });
  }

  /** The call `t` was let out but will not be sent now (it waits for its actor to come up). */
  release(t: Ticket) {
    if (!t.out) return;
    this.#back(t);
    this.#maybeResume();
    this.#pump();
  }

  /**
   * `t` was sent and came back: refused (not queued), answered, or otherwise ended. A refused
   * call must be held again (or leave) at once, before anything else is let out: the lane does
   * not resume until then, so that the call goes back in line ahead of every later one.
   */
  returned(t: Ticket, how: Return) {
    if (!t.out) return;
    const doomed = t.doomed;
    this.#back(t);
    const b = this.#block;
    if (how === "refused" && !b && t.epoch === this.#epoch) {
      // The first refusal of this epoch: the actor now refuses everything after it.
      let remaining = 0;
      for (const x of this.#inflight) {
        if (x.epoch === t.epoch && x.seq > t.seq) {
          x.doomed = true;
          remaining++;
        }
      }
      this.#block = { seq: t.seq, remaining, room: false };
      this.#window = Math.max(1, this.#inflight.size - remaining);
      this.#refusedOnce = true;
    } else if (how === "answered" && !doomed) {
      // The actor took one of ours out of its mailbox: there is room again.
      this.#backoffs = 0;
      this.#window = Math.min(
        this.#ceiling,
        this.#window + (this.#refusedOnce ? 1 / this.#window : 1),
      );
      if (b) b.room = true;
    }
    if (how === "refused") return; // hold() or leave() goes on from here
    this.#maybeResume();
    this.#pump();
  }

  /** `t` is answered for good (it may still be held or out). */
  leave(t: Ticket) {
    if (t.out) this.#back(t);
    this.live--;
    this.#maybeResume();
    this.#pump();
  }

  /** Whether the lane can be forgotten: nothing pending, nothing armed. */
  get idle(): boolean {
    return this.live === 0 && this.#block === undefined && this.#timer === undefined;
  }

  /** Fails every held call with `e` and stops the timer. */
  close(e: Error) {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    for (let i = this.#head; i < this.#held.length; i++) {
      const t = this.#held[i];
      if (!t.gone) t.fail?.(e);
    }
    this.#held = [];
    this.#head = 0;
  }

  #letOut(t: Ticket) {
    t.out = true;
    t.epoch = this.#epoch;
    t.doomed = false;
    this.#inflight.add(t);
  }

  /** `t` is no longer out; a doomed call counts as come back for the block. */
  #back(t: Ticket) {
    t.out = false;
    if (t.doomed && this.#block) this.#block.remaining--;
    t.doomed = false;
    if (t.woken) {
      t.woken = false;
      this.#woken--;
    }
    this.#inflight.delete(t);
  }

  /** The woken call `t` is being sent now: later calls may follow it directly. */
  sending(t: Ticket) {
    if (t.woken) {
      t.woken = false;
      this.#woken--;
    }
  }

  #insert(t: Ticket) {
    const h = this.#held;
    let lo = this.#head;
    let hi = h.length;
    if (hi === lo || h[hi - 1].seq < t.seq) h.push(t);
    else {
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (h[mid].seq < t.seq) lo = mid + 1;
        else hi = mid;
      }
      h.splice(lo, 0, t);
    }
    this.#heldLive++;
  }

  #maybeResume() {
    const b = this.#block;
    if (!b || b.remaining > 0 || this.#closed) return;
    if (b.room) return this.#resume();
    // While the actor holds calls of ours, their answers say when room frees up; only a caller
    // with none there has to probe.
    if (this.#timer !== undefined || this.#inflight.size > 0) return;
    const ms = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.#backoffs++);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#resume();
      if (this.idle) this.onIdle();
    }, ms * (0.5 + Math.random() / 2));
  }

  #resume() {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#block = undefined;
    this.#epoch = this.nextEpoch();
    this.#pump();
  }

  /** Lets held calls out, in order, while the window has room. */
  #pump() {
    if (this.#block || this.#closed) return;
    const h = this.#held;
    while (this.#heldLive > 0 && this.#inflight.size < this.#window) {
      const t = h[this.#head++];
      if (t.gone) continue;
      this.#heldLive--;
      this.#letOut(t);
      t.woken = true;
      this.#woken++;
      t.wake!();
    }
    // Skip gone ones at the head, and drop the consumed prefix now and then.
    while (this.#head < h.length && h[this.#head].gone) this.#head++;
    if (this.#heldLive === 0) {
      this.#held = [];
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > h.length) {
      this.#held = h.slice(this.#head);
      this.#head = 0;
    }
  }
}

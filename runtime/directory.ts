/**
 * What one process knows about the system: live nodes (from heartbeats) and actors (from
 * heartbeats and lifecycle events).
 *
 * Every process keeps its own directory; there is no central registry to lose. A node is dead
 * once it misses `missed` heartbeats in a row (by its own advertised period). When this
 * process's event loop was itself stalled, nothing is declared dead on that tick: the missing
 * heartbeats may simply not have been read yet.
 * @module
 */
import type { DeathReason } from "./errors.ts";
import type { ActorEvent, ActorInfo, Heartbeat } from "./protocol.ts";

/** State of an actor as far as this process knows. */
export type ActorState =
  | "up" // running at `info.node` with incarnation `info.inc`
  | "down" // its instance ended; its supervisor has not said yet whether it restarts
  | "restarting" // its supervisor is re-creating it
  | "gone"; // it will not come back

/** A directory entry for one actor. */
export interface ActorEntry {
  info: ActorInfo;
  state: ActorState;
  /** When the entry last changed state (ms since the epoch). */
  since?: number;
  reason?: DeathReason;
  detail?: string;
  /**
   * Its node's revision when it came up, if known (from its info, its "up" event, or the first
   * heartbeat that listed it): heartbeats older than this predate it and say nothing of it.
   */
  upRev?: number;
}

/** A directory entry for one node. */
export interface NodeEntry {
  hb: Heartbeat;
  lastSeen: number;
}

/** Something that changed in the directory. */
export type DirectoryEvent =
  | { type: "node_up"; node: string; hb: Heartbeat }
  | { type: "node_down"; node: string; hb: Heartbeat }
  /** The node's connection was re-established: messages sent to it meanwhile may be lost. */
  | { type: "node_reconnected"; node: string }
  | { type: "actor_up"; actor: ActorInfo }
  | { type: "actor_down"; actor: ActorInfo; reason: DeathReason; final: boolean; detail?: string }
  | { type: "actor_restarting"; actor: ActorInfo }
  | { type: "actor_gone"; actor: ActorInfo; reason: DeathReason; detail?: string };

/** How long an actor that is gone stays known (calls to it fail as died, not as unknown). */
const TOMBSTONE_MS = 10 * 60_000;

/** Node and actor directory of one process. */
export class Directory {
  readonly nodes = new Map<string, NodeEntry>();
  readonly actors = new Map<string, ActorEntry>();
  /** Highest rev seen in an event per node, to tell stale heartbeats from fresh ones. */
  readonly #eventRev = new Map<string, number>();
  readonly #listeners = new Set<(e: DirectoryEvent) => void>();
  readonly #changes = new Map<string, Set<() => void>>();
  #lastTick = 0;

  /** Subscribes to changes; returns the unsubscribe function. */
  on(listener: (e: DirectoryEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #emit(e: DirectoryEvent) {
    for (const l of [...this.#listeners]) {
      try {
        l(e);
      } catch (err) {
        console.error("directory listener failed:", err);
      }
    }
    const id = "actor" in e ? e.actor.id : undefined;
    if (id) this.#notify(id);
  }

  #notify(id: string) {
    const waiters = this.#changes.get(id);
    if (!waiters) return;
    this.#changes.delete(id);
    for (const w of waiters) w();
  }

  /** Resolves at the next change of this actor's entry (or when `signal` aborts). */
  changed(id: string, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      let set = this.#changes.get(id);
      if (!set) this.#changes.set(id, set = new Set());
      const done = () => {
        signal?.removeEventListener("abort", done);
        set!.delete(done);
        resolve();
      };
      set.add(done);
      signal?.addEventListener("abort", done, { once: true });
    });
  }

  /** Applies a heartbeat. */
  heartbeat(hb: Heartbeat, now = Date.now()) {
    const prev = this.nodes.get(hb.node);
    if (prev && prev.hb.seq > hb.seq && prev.hb.pid === hb.pid) return;
    this.nodes.set(hb.node, { hb, lastSeen: now });
    if (!prev) this.#emit({ type: "node_up", node: hb.node, hb });
    else if (prev.hb.pid === hb.pid && (hb.conn ?? 0) > (prev.hb.conn ?? 0)) {
      this.#emit({ type: "node_reconnected", node: hb.node });
    }
    const listed = new Set<string>();
    for (const a of hb.actors) {
      if (a.node !== hb.node) continue; // a node speaks only for what it hosts
      listed.add(a.id);
      this.#up(a, hb.rev);
    }
    // An actor this node no longer lists, while the heartbeat is no older than the last event
    // heard from the node nor than the actor's own start, ended without its "down" event reaching
    // us. A node lists, revision and `ended` in one snapshot (runtime/host.ts), so a heartbeat at
    // or after the start that lacks the actor is proof of its end; an older one (queued behind a
    // busy thread, or overtaken by the spawn's reply on the other connection) is no proof.
    const rev = this.#eventRev.get(hb.node) ?? -1;
    if (hb.rev < rev) return;
    for (const e of this.actors.values()) {
      if (e.state === "up" && e.info.node === hb.node && !listed.has(e.info.id)) {
        if (e.upRev !== undefined && hb.rev < e.upRev) continue;
        // Its node says how it ended, if lately; otherwise it vanished.
        const end = hb.ended?.find((x) => x.id === e.info.id && x.inc === e.info.inc);
        if (end) this.#down(e, end.reason, end.final);
        else this.#down(e, "node", false, "missing from its node's heartbeat");
      }
    }
  }

  /** Applies a lifecycle event. */
  event(ev: ActorEvent) {
    switch (ev.e) {
      case "up":
        this.#bumpRev(ev.actor.node, ev.rev);
        this.#up(ev.actor, ev.rev);
        break;
      case "down": {
        this.#bumpRev(ev.node, ev.rev);
        const e = this.actors.get(ev.id);
        if (e && e.info.inc === ev.inc && e.state === "up") {
          this.#down(e, ev.reason, ev.final, ev.detail);
        }
        break;
      }
      case "restarting": {
        const e = this.actors.get(ev.id);
        if (e && e.info.inc <= ev.inc && e.state !== "restarting") {
          if (e.state === "up") this.#down(e, "node", false);
          e.state = "restarting";
          this.#emit({ type: "actor_restarting", actor: e.info });
        }
        break;
      }
      case "gone": {
        const e = this.actors.get(ev.id);
        if (e && e.info.inc <= ev.inc && e.state !== "gone") {
          if (e.state === "up") this.#down(e, ev.reason, true, ev.detail);
          e.state = "gone";
          e.since = Date.now();
          e.reason = ev.reason;
          e.detail = ev.detail;
          this.#emit({ type: "actor_gone", actor: e.info, reason: ev.reason, detail: ev.detail });
        }
        break;
      }
    }
  }

  #bumpRev(node: string, rev: number) {
    if ((this.#eventRev.get(node) ?? -1) < rev) this.#eventRev.set(node, rev);
  }

  /** `rev`: the revision of the report (event or heartbeat), when its info lacks its own. */
  #up(a: ActorInfo, rev?: number) {
    const upRev = a.rev ?? rev;
    const e = this.actors.get(a.id);
    if (e) {
      if (a.inc < e.info.inc) return;
      // Same incarnation: either already known, or we saw it end and this is a stale report.
      if (a.inc === e.info.inc && (e.state !== "up" || e.info.node === a.node)) {
        // Known from a report without a revision (an older node's spawn reply): learn it now.
        if (e.state === "up" && e.upRev === undefined) e.upRev = upRev;
        return;
      }
    }
    this.actors.set(a.id, { info: a, state: "up", upRev });
    this.#emit({ type: "actor_up", actor: a });
  }

  #down(e: ActorEntry, reason: DeathReason, final: boolean, detail?: string) {
    e.state = final ? "gone" : "down";
    e.since = Date.now();
    e.reason = reason;
    e.detail = detail;
    this.#emit({ type: "actor_down", actor: e.info, reason, final, detail });
    if (final) this.#emit({ type: "actor_gone", actor: e.info, reason, detail });
  }

  /**
   * Declares dead every node whose heartbeats stopped. Call it periodically; `period` is how
   * often, so a late tick can be recognised.
   *
   * Heartbeats are read on this loop, so while it was busy (a long synchronous step, or a starved
   * process under load) none were read, whatever the nodes sent. A tick more than half a period
   * late therefore moves every node's last sighting on by the delay (the gap less the period it
   * was due after anyway): the loop's own lateness is not a node's silence, but a silent node
   * still ages by a period per tick, so it is found dead however late the ticks run (ticks every
   * 2 periods find it after twice the window). After a stall (a gap over two periods) nobody is
   * declared dead on that tick: heartbeats it hid may still be queued, unread.
   */
  tick(now: number, period: number) {
    const gap = this.#lastTick === 0 ? 0 : now - this.#lastTick;
    this.#lastTick = now;
    if (gap > 1.5 * period) {
      for (const n of this.nodes.values()) {
        n.lastSeen = Math.min(now, n.lastSeen + (gap - period));
      }
      if (gap > 2 * period + 100) return;
    }
    for (const [id, n] of this.nodes) {
      if (now - n.lastSeen > n.hb.interval * n.hb.missed) this.nodeDown(id);
    }
    // Forget actors gone long ago (their ids may be reused by new spawns anyway).
    for (const [id, e] of this.actors) {
      if (e.state === "gone" && e.since !== undefined && now - e.since > TOMBSTONE_MS) {
        this.actors.delete(id);
      }
    }
  }

  /** Removes a node and ends every actor on it. */
  nodeDown(id: string) {
    const n = this.nodes.get(id);
    if (!n) return;
    this.nodes.delete(id);
    this.#eventRev.delete(id);
    this.#emit({ type: "node_down", node: id, hb: n.hb });
    for (const e of this.actors.values()) {
      if (e.state === "up" && e.info.node === id) this.#down(e, "node", false);
    }
  }

  /** Wakes every waiter (at shutdown). */
  close() {
    for (const id of [...this.#changes.keys()]) this.#notify(id);
    this.#listeners.clear();
  }

  /** Looks an actor up by id. */
  actor(id: string): ActorEntry | undefined {
    return this.actors.get(id);
  }

  /** Marks an actor as being re-created by this process (its supervisor). */
  markRestarting(id: string) {
    const e = this.actors.get(id);
    if (e && e.state !== "restarting") {
      e.state = "restarting";
      this.#emit({ type: "actor_restarting", actor: e.info });
    }
  }

  /** Records an actor that this process just started or learned about. */
  record(a: ActorInfo) {
    this.#up(a);
  }

  /** Marks an actor as gone for good. */
  markGone(id: string, reason: DeathReason, detail?: string) {
    const e = this.actors.get(id);
    if (!e || e.state === "gone") return;
    if (e.state === "up") this.#down(e, reason, true, detail);
    else {
      e.state = "gone";
      e.since = Date.now();
      e.reason = reason;
      e.detail = detail;
      this.#emit({ type: "actor_gone", actor: e.info, reason, detail });
    }
  }
}

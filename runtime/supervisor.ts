/**
 * Erlang-style supervision: restart one child or all children, within a restart budget; past the
 * budget the failure goes to the parent supervisor, and at the top the supervisor fails.
 *
 * Supervisors live in the process that created them (the owner). Restarted actors keep their id
 * (so handles keep working) and get a new incarnation; their constructor runs again. A plain
 * `system.spawn` is a one-child one_for_one supervisor with the spawn's budget.
 * @module
 */
import type { AnyActorDef } from "./actor.ts";
import { type DeathReason, SupervisorFailedError } from "./errors.ts";
import type { ActorInfo, Resources } from "./protocol.ts";

/** Restart strategy. */
export type Strategy = "one_for_one" | "one_for_all";

/** Where and how a supervised actor runs. */
export interface ChildOptions {
  name?: string;
  resources?: Resources;
  node?: string;
  mailbox?: number;
  initTimeoutMs?: number;
  placementTimeoutMs?: number;
}

/** What a supervisor needs from its system. */
export interface SupervisionEnv {
  /** Places and starts incarnation `child.inc` of the child. */
  start(child: ActorChild): Promise<ActorInfo>;
  /** Ends the child's current instance so it can be restarted (not final). */
  kill(child: ActorChild): Promise<void>;
  /** Whether the child's current incarnation is still up (it may die while it starts). */
  alive(child: ActorChild): boolean;
  /** Tells every process the child is being restarted. */
  restarting(child: ActorChild): void;
  /** Tells every process the child will not come back. */
  gone(child: ActorChild, reason: DeathReason, detail?: string): Promise<void>;
  /** Called when a top-level supervisor gives up. */
  failed(sup: SupervisorNode, error: SupervisorFailedError): void;
}

/** A supervised actor. */
export class ActorChild {
  state: "starting" | "running" | "restarting" | "stopped" | "gone" = "starting";
  inc: number;
  info?: ActorInfo;

  constructor(
    readonly id: string,
    readonly def: AnyActorDef,
    readonly input: unknown,
    readonly options: ChildOptions,
    readonly parent: SupervisorNode,
    firstInc: number,
  ) {
    this.inc = firstInc;
  }
}

/** Restart budget: at most `max` restarts within any `withinMs` window. */
export interface Budget {
  maxRestarts: number;
  withinMs: number;
}

/** Default budget (docs/architecture.md §5). */
export const DEFAULT_BUDGET: Budget = { maxRestarts: 3, withinMs: 60_000 };

type Child = ActorChild | SupervisorNode;

/** A node of a supervision tree. */
export class SupervisorNode {
  readonly children: Child[] = [];
  #restarts: number[] = [];
  #queue: Promise<void> = Promise.resolve();
  #closed = false;
  failedError?: SupervisorFailedError;

  constructor(
    readonly label: string,
    readonly strategy: Strategy,
    readonly budget: Budget,
    readonly env: SupervisionEnv,
    readonly parent?: SupervisorNode,
  ) {}

  /** Every actor under this supervisor, depth first. */
  actors(): ActorChild[] {
    return this.children.flatMap((c) => c instanceof ActorChild ? [c] : c.actors());
  }

  /** Starts every child in order (the first start: a failure is thrown to the caller). */
  async startAll(): Promise<void> {
    for (const c of this.children) {
      if (c instanceof ActorChild) {
        c.info = await this.env.start(c);
        c.state = "running";
        if (!this.env.alive(c)) this.childFailed(c, "node", "it died while starting");
      } else {
        await c.startAll();
      }
    }
  }

  /** Reports that a child died (called by the system on a non-final down of its instance). */
  childFailed(child: Child, reason: DeathReason, detail?: string) {
    if (this.#closed) return;
    if (child instanceof ActorChild) {
      if (child.state !== "running") return;
      child.state = "restarting";
      this.env.restarting(child);
    }
    this.#queue = this.#queue.then(() => this.#handle(child, reason, detail)).catch((e) => {
      console.error(`supervisor ${this.label}:`, e);
    });
  }

  #spend(): boolean {
    const now = Date.now();
    this.#restarts = this.#restarts.filter((t) => now - t < this.budget.withinMs);
    if (this.#restarts.length >= this.budget.maxRestarts) return false;
    this.#restarts.push(now);
    return true;
  }

  async #handle(child: Child, reason: DeathReason, detail?: string) {
    if (this.#closed) return;
    if (!this.#spend()) {
      return await this.#escalate(
        `${this.label}: ${child instanceof ActorChild ? child.id : child.label} died (${reason}${
          detail ? `: ${detail}` : ""
        }) and the restart budget (${this.budget.maxRestarts} in ${this.budget.withinMs} ms) is spent`,
      );
    }
    const ok = this.strategy === "one_for_one"
      ? await this.#restart(child)
      : await this.#restartAll();
    if (!ok.ok && !this.#closed) {
      // The restart itself failed (e.g. the constructor threw): that is another failure.
      await new Promise((r) => setTimeout(r, Math.min(1000, 50 * 2 ** this.#restarts.length)));
      await this.#handle(ok.child, "init", ok.detail);
    }
  }

  async #restart(
    child: Child,
  ): Promise<{ ok: true } | { ok: false; child: Child; detail: string }> {
    if (child instanceof ActorChild) {
      if (child.state === "stopped" || child.state === "gone") return { ok: true };
      child.state = "restarting";
      child.inc++;
      try {
        child.info = await this.env.start(child);
        if (child.state !== "restarting") {
          // Stopped (or given up) while the new incarnation was starting.
          await this.env.kill(child).catch(() => {});
          return { ok: true };
        }
        child.state = "running";
        if (!this.env.alive(child)) {
          return { ok: false, child, detail: "it died while starting" };
        }
        return { ok: true };
      } catch (e) {
        return { ok: false, child, detail: (e as Error).message };
      }
    }
    child.#reset();
    await child.#killAll();
    for (const c of child.children) {
      const r = await child.#restart(c);
      if (!r.ok) return { ok: false, child, detail: r.detail };
    }
    return { ok: true };
  }

  async #restartAll(): Promise<{ ok: true } | { ok: false; child: Child; detail: string }> {
    await this.#killAll();
    for (const c of this.children) {
      if (c instanceof SupervisorNode) c.#reset();
      const r = await this.#restart(c);
      if (!r.ok) return r;
    }
    return { ok: true };
  }

  #reset() {
    this.#restarts = [];
    this.failedError = undefined;
  }

  /** Ends every running actor below (for a restart), telling others they are restarting. */
  async #killAll() {
    const running = this.actors().filter((a) => a.state === "running" || a.state === "restarting");
    for (const a of running) {
      if (a.state === "running") {
        a.state = "restarting";
        this.env.restarting(a);
      }
    }
    await Promise.all(running.map((a) => this.env.kill(a).catch(() => {})));
  }

  async #escalate(message: string) {
    if (this.parent) {
      await this.#killAll();
      this.parent.childFailed(this, "budget", message);
      return;
    }
    this.#closed = true;
    const err = new SupervisorFailedError(message);
    this.failedError = err;
    for (const a of this.actors()) {
      if (a.state === "running" || a.state === "restarting" || a.state === "starting") {
        a.state = "gone";
        await this.env.kill(a).catch(() => {});
        await this.env.gone(a, "budget", message);
      }
    }
    this.env.failed(this, err);
  }

  /** Stops supervising (no more restarts), e.g. at shutdown. */
  close() {
    this.#closed = true;
    for (const c of this.children) if (c instanceof SupervisorNode) c.close();
  }

  /** Waits for restarts in progress. */
  settled(): Promise<void> {
    return this.#queue;
  }
}

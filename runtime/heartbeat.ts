/**
 * The main-thread side of a process's heartbeat: starts the worker, feeds it the payload.
 * @module
 */
import type { ConnectNatsOptions } from "./connect.ts";
import type { HeartbeatCommand, HeartbeatReply } from "./heartbeat_worker.ts";

/** Publishes this process's heartbeats from a worker thread. */
export class HeartbeatPublisher {
  #worker: Worker;
  #replies: ((r: HeartbeatReply) => void)[] = [];
  #closed = false;

  private constructor(
    worker: Worker,
    onFrozen: (ms: number) => void,
    onHeard?: (subject: string, text: string) => void,
  ) {
    this.#worker = worker;
    worker.onmessage = (e: MessageEvent<HeartbeatReply>) => {
      const r = e.data;
      if (r.type === "heard") return onHeard?.(r.subject, r.text);
      if (r.type === "frozen") return onFrozen(r.ms);
      if (r.type === "error" && this.#replies.length === 0) {
        console.error(`heartbeat: ${r.message}`);
        return;
      }
      this.#replies.shift()?.(r);
    };
  }

  /**
   * Starts the worker and waits until its first heartbeat is out. `onFrozen` is called when the
   * worker finds that the whole process was stopped for longer than `frozenAfterMs`. With
   * `listen`, the worker also receives the heartbeats on that subject on its connection and hands
   * each to `onHeard`.
   */
  static async start(
    servers: string[],
    options: ConnectNatsOptions,
    subject: string,
    intervalMs: number,
    frozenAfterMs: number,
    payload: Record<string, unknown>,
    onFrozen: (ms: number) => void,
    listen?: { subject: string; onHeard: (subject: string, text: string) => void },
  ): Promise<HeartbeatPublisher> {
    const worker = new Worker(new URL("./heartbeat_worker.ts", import.meta.url), {
      type: "module",
    });
    const p = new HeartbeatPublisher(worker, onFrozen, listen?.onHeard);
    const r = await p.#command({
      type: "start",
      servers,
      options,
      subject,
      intervalMs,
      frozenAfterMs,
      payload,
      listen: listen?.subject,
    });
    if (r.type === "error") {
      worker.terminate();
      throw new Error(`heartbeat worker failed to connect: ${r.message}`);
    }
    return p;
  }

  #command(cmd: HeartbeatCommand): Promise<HeartbeatReply> {
    return new Promise((resolve) => {
      this.#replies.push(resolve);
      this.#worker.postMessage(cmd);
    });
  }

  /** Replaces the payload; it goes out at once, or with the next beat when `quiet`. */
  update(payload: Record<string, unknown>, quiet = false) {
    if (!this.#closed) {
      this.#worker.postMessage({ type: "payload", payload, quiet } satisfies HeartbeatCommand);
    }
  }

  /** Stops heartbeats (others will see this node as dead unless it says goodbye first). */
  async stop() {
    if (this.#closed) return;
    this.#closed = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<void>((r) => timer = setTimeout(r, 3000));
    await Promise.race([this.#command({ type: "stop" }), timeout]);
    clearTimeout(timer);
    this.#worker.terminate();
  }
}

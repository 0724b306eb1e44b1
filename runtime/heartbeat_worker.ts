/**
 * Publishes a process's heartbeats from a worker thread, on a connection of its own.
 *
 * A handler that computes for a few seconds on the main thread (an SVD, a big copy) must not
 * make its node look dead: liveness means "the process is there", which a separate thread can
 * tell even while the main thread is busy. The main thread posts the latest payload whenever it
 * changes; this thread stamps a sequence number on it and publishes it every period.
 *
 * It also receives the other nodes' heartbeats (`listen`) and hands them to the main thread: on
 * the main connection they would queue behind whatever else arrives there, and a process with a
 * backlog of replies could read a live node's heartbeats too late and take it for dead.
 * @module
 */
/// <reference lib="deno.worker" />
import type { NatsConnection } from "@nats-io/nats-core";
import { connectNats, type ConnectNatsOptions } from "./connect.ts";

/** Messages the main thread sends to the heartbeat worker. */
export type HeartbeatCommand =
  | {
    type: "start";
    servers: string[];
    options: ConnectNatsOptions;
    subject: string;
    intervalMs: number;
    /** A gap this long between two beats means the whole process was frozen. */
    frozenAfterMs: number;
    payload: Record<string, unknown>;
    /** The subject (wildcard) of the heartbeats to receive and pass on, if any. */
    listen?: string;
  }
  /** A new payload; it goes out at once unless `quiet` (then with the next period's beat). */
  | { type: "payload"; payload: Record<string, unknown>; quiet?: boolean }
  | { type: "stop" };

/** Messages the heartbeat worker sends back. */
export type HeartbeatReply =
  | { type: "started" }
  | { type: "stopped" }
  | { type: "error"; message: string }
  | { type: "frozen"; ms: number }
  /** A heartbeat received on `listen`: its subject and its JSON text. */
  | { type: "heard"; subject: string; text: string };

let nc: NatsConnection | undefined;
let timer: ReturnType<typeof setTimeout> | undefined;
let payload: Record<string, unknown> = {};
let subject = "";
let seq = 0;
let last = 0;
let frozenAfterMs = Infinity;
const enc = new TextEncoder();

function beat() {
  const now = Date.now();
  // This thread is never busy, so a long gap means the process itself was stopped.
  if (last !== 0 && now - last > frozenAfterMs) {
    self.postMessage({ type: "frozen", ms: now - last } satisfies HeartbeatReply);
  }
  last = now;
  if (!nc || nc.isClosed()) return;
  try {
    nc.publish(subject, enc.encode(JSON.stringify({ ...payload, seq: seq++ })));
  } catch {
    // Reconnecting: the next period tries again.
  }
}

self.onmessage = async (e: MessageEvent<HeartbeatCommand>) => {
  const cmd = e.data;
  try {
    if (cmd.type === "start") {
      payload = cmd.payload;
      subject = cmd.subject;
      frozenAfterMs = cmd.frozenAfterMs;
      nc = await connectNats(cmd.servers, { ...cmd.options, name: `${cmd.options.name ?? ""}-hb` });
      if (cmd.listen) {
        nc.subscribe(cmd.listen, {
          callback: (err, msg) => {
            if (err) return;
            self.postMessage(
              { type: "heard", subject: msg.subject, text: msg.string() } satisfies HeartbeatReply,
            );
          },
        });
        await nc.flush();
      }
      beat();
      timer = setInterval(beat, cmd.intervalMs);
      self.postMessage({ type: "started" } satisfies HeartbeatReply);
    } else if (cmd.type === "payload") {
      payload = cmd.payload;
      // A change (an actor started or ended) goes out at once rather than at the next period;
      // fresh counters (mailboxes, calls) wait for it.
      if (!cmd.quiet) beat();
    } else if (cmd.type === "stop") {
      if (timer !== undefined) clearInterval(timer);
      timer = undefined;
      if (nc) await nc.close();
      nc = undefined;
      self.postMessage({ type: "stopped" } satisfies HeartbeatReply);
    }
  } catch (err) {
    self.postMessage({ type: "error", message: (err as Error).message } satisfies HeartbeatReply);
  }
};

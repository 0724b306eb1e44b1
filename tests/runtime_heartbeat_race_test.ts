// A live actor must never be declared dead because a heartbeat snapshot predates it or was taken
// while it was still winding down. Two races did exactly that: a node kept listing nothing for an
// actor whose `close` was still running (its heartbeats then carried the old revision without
// it), and a heartbeat taken before a spawn that reached a process after the spawn's reply.
// Real deaths (a killed actor, an actor gone from a heartbeat newer than its start) must still be
// noticed.
import assert from "node:assert/strict";
import { defineActor, init, z } from "../internal_mod.ts";
import { Directory, type DirectoryEvent } from "../runtime/directory.ts";
import type { ActorInfo } from "../runtime/protocol.ts";
import { hb } from "./support/heartbeat.ts";

/** An actor whose `close` takes a while (freeing GPU buffers, flushing a checkpoint). */
export const SlowClose = defineActor({
  name: "SlowClose",
  module: import.meta.url,
  init: z.object({ closeMs: z.number().int().positive() }),
  create: (input) => ({ closeMs: input.closeMs }),
  close: async (s) => {
    await new Promise((r) => setTimeout(r, s.closeMs));
  },
  methods: {
    ping: { input: z.undefined(), output: z.string(), handler: () => "pong" },
  },
});

/** Keeps its node's main thread busy (as parsing a large blob from the object store does). */
export const Spinner = defineActor({
  name: "Spinner",
  module: import.meta.url,
  init: z.object({ spinMs: z.number().int().nonnegative() }),
  create: (input) => {
    spin(input.spinMs);
    return {};
  },
  methods: {
    spin: {
      input: z.number().int().nonnegative(),
      output: z.number(),
      handler: (_s, ms) => {
        spin(ms);
        return Deno.pid;
      },
    },
  },
});

/** Blocks the calling thread: no timer, no message, no socket read runs meanwhile. */
function spin(ms: number) {
  const end = Date.now() + ms;
  while (Date.now() < end) { /* busy on purpose */ }
}

function info(id: string, node: string, rev?: number, inc = 0): ActorInfo {
  return { id, type: "T", inc, node, owner: "owner", resources: {}, ...(rev ? { rev } : {}) };
}

if (Deno.mainModule === import.meta.url) {
  Deno.test("an actor whose close runs for seconds ends as stopped, never as missing from its node's heartbeat", async () => {
    const system = await init({ nodes: 1 });
    try {
      const [node] = system.localNodes;
      // 2.5 s of close: about five heartbeat periods (500 ms) go out while it runs.
      const a = await system.spawn(SlowClose, { closeMs: 2500 }, { node: node.id });
      assert.equal(await a.ping(), "pong");
      const downs: { reason: string; detail?: string }[] = [];
      const off = system.on((e) => {
        if (e.type === "actor_down" && e.actor.id === a.ref.id) {
          downs.push({ reason: e.reason, detail: e.detail });
        }
      });
      await system.stop(a, { graceMs: 3000 });
      // The down event goes out once close has returned; give it time to arrive.
      const deadline = Date.now() + 10_000;
      while (downs.length === 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      off();
      assert.ok(downs.length > 0, "the stop was never seen as an actor_down");
      assert.deepEqual(
        downs.map((d) => d.reason),
        downs.map(() => "stopped"),
        `expected only reason "stopped", got ${JSON.stringify(downs)}`,
      );
    } finally {
      await system.shutdown();
    }
  });

  Deno.test("a node whose main thread is blocked for seconds around a spawn loses no actor", async () => {
    const system = await init({ nodes: 1 });
    try {
      const [node] = system.localNodes;
      const downs: string[] = [];
      const off = system.on((e) => {
        if (e.type === "actor_down" || e.type === "node_down") downs.push(JSON.stringify(e));
      });
      const peer = await system.spawn(SlowClose, { closeMs: 1 }, { node: node.id });
      // 3 s of constructor on the node's main thread: its heartbeat thread keeps sending the
      // list from before the spawn while the spawn's reply and "up" event wait behind it.
      const busy = await system.spawn(Spinner, { spinMs: 3000 }, { node: node.id });
      // And 3 s blocked right after the spawn, while heartbeats with the new list are due.
      assert.equal(await busy.spin(3000), node.pid);
      assert.equal(await peer.ping(), "pong");
      // A few more periods for late heartbeats of the blocked stretch to arrive and be judged.
      await new Promise((r) => setTimeout(r, 1500));
      off();
      assert.deepEqual(downs, []);
      for (const id of [peer.ref.id, busy.ref.id]) {
        assert.equal(system.actors().find((a) => a.id === id)?.state, "up", id);
      }
    } finally {
      await system.shutdown();
    }
  });

  Deno.test("a killed actor with a slow close is still seen as killed by the heartbeat or event", async () => {
    const system = await init({ nodes: 1 });
    try {
      const [node] = system.localNodes;
      const a = await system.spawn(SlowClose, { closeMs: 1500 }, { node: node.id });
      assert.equal(await a.ping(), "pong");
      const downs: string[] = [];
      const off = system.on((e) => {
        if (e.type === "actor_down" && e.actor.id === a.ref.id && e.actor.inc === 0) {
          downs.push(e.reason);
        }
      });
      await system.kill(a);
      const deadline = Date.now() + 10_000;
      while (downs.length === 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      off();
      assert.deepEqual(downs, ["killed"]);
    } finally {
      await system.shutdown();
    }
  });
}

Deno.test("a heartbeat taken before a spawn, read after its reply, does not kill the new actor", () => {
  const d = new Directory();
  const events: DirectoryEvent[] = [];
  d.on((e) => events.push(e));
  d.event({ e: "up", actor: info("old", "n1", 1), rev: 1 });
  d.heartbeat(hb("n1", [info("old", "n1", 1)], 1, 0));
  // The spawn's reply: "new" came up at rev 2. Its "up" event has not been read yet.
  d.record(info("new", "n1", 2));
  // Sent at rev 1, before the spawn (queued behind a busy main thread, or on the other
  // connection): it cannot list "new", and must not count as news of its end.
  d.heartbeat(hb("n1", [info("old", "n1", 1)], 1, 1));
  assert.equal(d.actor("new")?.state, "up", JSON.stringify(events));
  d.event({ e: "up", actor: info("new", "n1", 2), rev: 2 });
  d.heartbeat(hb("n1", [info("old", "n1", 1), info("new", "n1", 2)], 2, 2));
  assert.equal(d.actor("new")?.state, "up");
  // rev 3 without "new": it ended there and its "down" event was lost. That is a real death.
  d.heartbeat(hb("n1", [info("old", "n1", 1)], 3, 3));
  const e = d.actor("new");
  assert.equal(e?.state, "down");
  assert.equal(e?.reason, "node");
});

Deno.test("an actor learned from a heartbeat is ended only by a heartbeat at or after its start", () => {
  const d = new Directory();
  // A third process hears of "x" first from a heartbeat at rev 4 (its up event is late).
  d.heartbeat(hb("n1", [info("x", "n1", 4)], 4, 10));
  assert.equal(d.actor("x")?.state, "up");
  // A heartbeat of a new process under the same node id would reset seq; the same process never
  // sends an older seq, so only a newer snapshot reaches the check: rev 5 without x is its end.
  d.heartbeat(hb("n1", [], 5, 11));
  assert.equal(d.actor("x")?.state, "down");
});

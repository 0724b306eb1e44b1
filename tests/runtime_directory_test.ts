// The pieces that decide liveness and placement, without processes: the directory (heartbeats,
// events, dead-node detection), node choice by resources, and shared call deadlines.
import assert from "node:assert/strict";
import { Deadlines } from "../runtime/deadlines.ts";
import { Directory, type DirectoryEvent } from "../runtime/directory.ts";
import { pickNode } from "../runtime/placement.ts";
import type { ActorInfo } from "../runtime/protocol.ts";
import { hb } from "./support/heartbeat.ts";

function actor(id: string, node: string, inc = 0): ActorInfo {
  return { id, type: "T", inc, node, owner: "owner", resources: {} };
}

Deno.test("a node that stops sending heartbeats is declared dead, with its actors", () => {
  const d = new Directory();
  const events: DirectoryEvent[] = [];
  d.on((e) => events.push(e));
  const t0 = 1_000_000;
  d.heartbeat(hb("n1", [actor("a", "n1")], 1, 0), t0);
  d.heartbeat(hb("n2", [], 0, 0), t0);
  for (let t = t0; t <= t0 + 1400; t += 250) {
    d.heartbeat(hb("n2", [], 0, (t - t0) / 250), t);
    d.tick(t, 250);
  }
  assert.ok(d.nodes.has("n1"), "1.4 s of silence is under 3 missed heartbeats of 500 ms");
  d.heartbeat(hb("n2", [], 0, 7), t0 + 1750);
  d.tick(t0 + 1500, 250);
  d.tick(t0 + 1750, 250);
  assert.ok(!d.nodes.has("n1"));
  assert.ok(d.nodes.has("n2"));
  assert.equal(d.actor("a")?.state, "down");
  assert.deepEqual(events.map((e) => e.type), [
    "node_up",
    "actor_up",
    "node_up",
    "node_down",
    "actor_down",
  ]);
});

Deno.test("a stalled event loop declares nobody dead on the tick after the stall", () => {
  const d = new Directory();
  const t0 = 5_000_000;
  d.heartbeat(hb("n1", [], 0, 0), t0);
  d.tick(t0, 250);
  d.tick(t0 + 3000, 250); // 3 s without a tick: the heartbeats may just be unread
  assert.ok(d.nodes.has("n1"));
  for (let t = t0 + 3250; t <= t0 + 4250; t += 250) d.tick(t, 250);
  assert.ok(d.nodes.has("n1"), "silence counts from the stall's end (less the period due anyway)");
  d.tick(t0 + 4500, 250);
  assert.ok(!d.nodes.has("n1"), "still silent after the stall: dead");
});

Deno.test("a loop that keeps ticking late does not add its own delays to a node's silence", () => {
  const d = new Directory();
  const t0 = 7_000_000;
  d.heartbeat(hb("n1", [], 0, 0), t0);
  d.heartbeat(hb("n2", [], 0, 0), t0);
  d.tick(t0, 250);
  // Ticks 500 ms apart (each 250 ms late, under the 600 ms of a stall): only one period of each
  // counts as silence. n2's heartbeats are read between the ticks, n1 has none.
  let t = t0;
  for (let i = 1; i <= 6; i++) {
    d.heartbeat(hb("n2", [], 0, i), t + 250);
    d.tick(t += 500, 250);
  }
  assert.ok(d.nodes.has("n1"), "3 s of late ticks are 1.5 s of silence, not over the window");
  d.heartbeat(hb("n2", [], 0, 7), t + 250);
  d.tick(t += 500, 250);
  assert.ok(!d.nodes.has("n1"), "a silent node is still found, after twice the window");
  assert.ok(d.nodes.has("n2"), "a node whose heartbeats are read stays");
});

Deno.test("an actor missing from a fresh heartbeat is down; a stale heartbeat changes nothing", () => {
  const d = new Directory();
  d.event({ e: "up", actor: actor("a", "n1"), rev: 1 });
  d.event({ e: "up", actor: actor("b", "n1"), rev: 2 });
  // Sent before "b" started (rev 1): it lacks b, but that says nothing.
  d.heartbeat(hb("n1", [actor("a", "n1")], 1, 5));
  assert.equal(d.actor("b")?.state, "up");
  // rev 3: b is gone and its down event was lost.
  d.heartbeat(hb("n1", [actor("a", "n1")], 3, 6));
  assert.equal(d.actor("b")?.state, "down");
  assert.equal(d.actor("a")?.state, "up");
});

Deno.test("incarnations: old reports never resurrect, newer ones replace", () => {
  const d = new Directory();
  d.event({ e: "up", actor: actor("a", "n1", 0), rev: 1 });
  d.event({ e: "down", id: "a", inc: 0, node: "n1", reason: "killed", final: false, rev: 2 });
  d.heartbeat(hb("n1", [actor("a", "n1", 0)], 1, 1)); // late heartbeat of incarnation 0
  assert.equal(d.actor("a")?.state, "down");
  d.event({ e: "restarting", id: "a", inc: 0, owner: "o" });
  assert.equal(d.actor("a")?.state, "restarting");
  d.event({ e: "up", actor: actor("a", "n2", 1), rev: 1 });
  assert.equal(d.actor("a")?.state, "up");
  assert.equal(d.actor("a")?.info.node, "n2");
  d.event({ e: "down", id: "a", inc: 0, node: "n1", reason: "node", final: false, rev: 3 });
  assert.equal(d.actor("a")?.state, "up", "a down of incarnation 0 does not touch incarnation 1");
  d.event({ e: "gone", id: "a", inc: 1, reason: "budget" });
  assert.equal(d.actor("a")?.state, "gone");
  assert.equal(d.actor("a")?.reason, "budget");
});

Deno.test("placement: resources, placeable nodes first, pinning, exclusions, in-flight reservations", () => {
  const d = new Directory();
  d.heartbeat(hb("self", [], 0, 0, { placeable: false, resources: { gpu: 1 } }));
  d.heartbeat(hb("a", [actor("x", "a")], 0, 0, { resources: { gpu: 1 }, used: { gpu: 1 } }));
  d.heartbeat(hb("b", [], 0, 0, { resources: { gpu: 2 } }));
  d.heartbeat(hb("c", [], 0, 0, { resources: {} }));
  const base = { self: "self" };
  assert.equal(pickNode(d.nodes, { ...base, resources: { gpu: 1 } }), "b");
  assert.equal(pickNode(d.nodes, { ...base, resources: { gpu: 3 } }), undefined);
  // Without resources: the least loaded placeable node, never this process unless asked.
  const free = pickNode(d.nodes, { ...base, resources: {} });
  assert.ok(free === "b" || free === "c");
  assert.equal(pickNode(d.nodes, { ...base, resources: {}, pinned: "local" }), "self");
  assert.equal(pickNode(d.nodes, { ...base, resources: { gpu: 1 }, pinned: "a" }), undefined);
  assert.equal(
    pickNode(d.nodes, { ...base, resources: { gpu: 1 }, exclude: new Set(["b"]) }),
    "self",
  );
  assert.equal(
    pickNode(d.nodes, {
      ...base,
      resources: { gpu: 1 },
      exclude: new Set(["self"]),
      inflight: new Map([["b", { gpu: 2 }]]),
    }),
    undefined,
  );
});

Deno.test("deadlines share one timer and fire in order, cancelled ones never", async () => {
  const dl = new Deadlines();
  const fired: string[] = [];
  const now = Date.now();
  dl.add(now + 60, () => fired.push("60"));
  const cancel = dl.add(now + 20, () => fired.push("20"));
  dl.add(now + 30, () => fired.push("30"));
  cancel();
  await new Promise((r) => setTimeout(r, 120));
  assert.deepEqual(fired, ["30", "60"]);
  dl.add(now + 10_000, () => fired.push("late"));
  dl.clear();
  assert.equal(dl.size, 0);
});

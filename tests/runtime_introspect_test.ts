// The system's state and events as seen from a process that only joined by URL: nodes and actors
// with heartbeat ages, mailbox depths and calls per second (from heartbeats), deaths, restarts
// and node departures, and application events an actor publishes on a node process.
import assert from "node:assert/strict";
import {
  type EventRecord,
  eventRecord,
  eventRecordSchema,
  init,
  InvalidArgumentError,
  type System,
  systemSnapshotSchema,
} from "../mod.ts";
import { Counter } from "./runtime_actors_test.ts";
import { Emitter } from "./support/emitter_actor.ts";
import { waitUntil } from "./support/faults.ts";

function recorder(system: System): EventRecord[] {
  const seen: EventRecord[] = [];
  system.on((e) => seen.push(eventRecordSchema.parse(eventRecord(e))));
  return seen;
}

Deno.test("introspection and events from a process that joined by URL", async (t) => {
  const owner = await init({ nodes: 2 });
  const observer = await init({
    nats: [...owner.servers],
    ...owner.credentials,
    nodeId: "observer",
  });
  try {
    const seen = recorder(observer);
    const [n0, n1] = owner.localNodes.map((n) => n.id);

    await t.step("nodes and actors, schema-checked", async () => {
      await owner.spawn(Counter, { start: 0 }, { name: "busy", node: n0 });
      await waitUntil("the observer sees the actor and every node", () => {
        const s = observer.introspect();
        return s.actors.some((a) => a.id === "busy" && a.state === "up") && s.nodes.length === 4;
      });
      const snap = systemSnapshotSchema.parse(observer.introspect());
      assert.equal(snap.system, "default");
      assert.equal(snap.node, "observer");
      assert.deepEqual(
        snap.nodes.map((n) => n.id).sort(),
        [owner.nodeId, n0, n1, "observer"].sort(),
      );
      const node0 = snap.nodes.find((n) => n.id === n0)!;
      assert.equal(node0.pid, owner.localNodes[0].pid);
      assert.equal(node0.host, Deno.hostname());
      assert.ok(node0.heartbeatAgeMs < 2000, `heartbeat age ${node0.heartbeatAgeMs}`);
      assert.equal(snap.nodes.find((n) => n.id === "observer")!.self, true);
      const a = snap.actors.find((x) => x.id === "busy")!;
      assert.deepEqual(
        { type: a.type, node: a.node, owner: a.owner, inc: a.inc, state: a.state },
        { type: "Counter", node: n0, owner: owner.nodeId, inc: 0, state: "up" },
      );
    });

    await t.step("mailbox depth and calls per second come with heartbeats", async () => {
      const c = await owner.getActor(Counter, "busy");
      for (let i = 0; i < 40; i++) await c.add(1);
      const slow = c.slow({ ms: 2500 });
      const queued = Array.from({ length: 5 }, (_, i) => c.record({ i }));
      await waitUntil("the observer sees 5 queued calls", () => {
        const a = observer.introspect().actors.find((x) => x.id === "busy");
        return a?.queued === 5 && a.busy === true;
      }, 5000);
      const a = observer.introspect().actors.find((x) => x.id === "busy")!;
      assert.ok(a.calls !== null && a.calls >= 40, `calls ${a.calls}`);
      assert.ok(a.callsPerSec !== null && a.callsPerSec > 0, `calls/s ${a.callsPerSec}`);
      await Promise.all([slow, ...queued]);
      await waitUntil("the mailbox is empty again", () => {
        const x = observer.introspect().actors.find((y) => y.id === "busy");
        return x?.queued === 0 && x.busy === false;
      }, 5000);
    });

    await t.step("an actor's death and restart, and a node's departure, as events", async () => {
      const victim = await owner.spawn(Counter, { start: 0 }, { name: "victim", node: n1 });
      await victim.add(1);
      owner.localNodes[1].kill("SIGKILL");
      await waitUntil(
        "the observer sees the restart and the node's departure",
        () =>
          seen.some((e) =>
            e.type === "actor_up" && e.actor?.id === "victim" && e.actor.inc === 1
          ) && seen.some((e) => e.type === "node_down" && e.node === n1),
        15_000,
      );
      const down = seen.find((e) => e.type === "actor_down" && e.actor?.id === "victim");
      assert.ok(down, "a death was reported");
      assert.equal(down.reason, "node");
      assert.ok(
        seen.some((e) => e.type === "actor_restarting" && e.actor?.id === "victim"),
        "the supervisor announced the restart",
      );
      const a = observer.introspect().actors.find((x) => x.id === "victim")!;
      assert.equal(a.state, "up");
      assert.equal(a.inc, 1);
      assert.notEqual(a.node, n1);
    });

    await t.step("an actor stopped on purpose is never reported as a death", async () => {
      const ids = ["s0", "s1", "s2", "s3", "s4"];
      for (const id of ids) await owner.spawn(Counter, { start: 0 }, { name: id, node: n0 });
      for (const id of ids) await owner.stop(await owner.getActor(Counter, id));
      await waitUntil(
        "the observer sees them all gone",
        () => ids.every((id) => seen.some((e) => e.type === "actor_gone" && e.actor?.id === id)),
      );
      const deaths = seen.filter((e) =>
        e.type === "actor_down" && ids.includes(e.actor!.id) && (!e.final || e.reason !== "stopped")
      );
      assert.deepEqual(deaths, []);
    });

    await t.step("application events from an actor on a node process", async () => {
      const em = await owner.spawn(Emitter, {}, { name: "emitter", node: n0 });
      await em.emit([{ kind: "train.step", data: { step: 3, loss: 1.5 } }, {
        kind: "note",
        data: null,
      }]);
      await waitUntil(
        "both events arrived",
        () => seen.filter((e) => e.type === "app" && e.source === "emitter").length === 2,
        5000,
      );
      const [step, note] = seen.filter((e) => e.type === "app" && e.source === "emitter");
      assert.equal(step.kind, "train.step");
      assert.deepEqual(step.data, { step: 3, loss: 1.5 });
      assert.equal(step.node, n0);
      assert.equal(note.kind, "note");
      assert.equal(note.seq, step.seq! + 1);
      // A process emits too, without an actor; the owner hears its own.
      const mine = recorder(owner);
      observer.emit("dash.hello", { x: 1 });
      await waitUntil(
        "the owner heard the observer",
        () =>
          mine.some((e) => e.type === "app" && e.kind === "dash.hello" && e.node === "observer"),
      );
    });

    await t.step("an event that claims another node's name is dropped", async () => {
      const before = seen.length;
      observer.nc.publish(
        `actors.default.rt.ae.observer`,
        JSON.stringify({ kind: "forged", node: n0, time: Date.now(), seq: 0, data: null }),
      );
      observer.emit("marker");
      await waitUntil("the marker arrived", () => seen.some((e) => e.kind === "marker"));
      assert.ok(!seen.slice(before).some((e) => e.kind === "forged"));
    });

    await t.step("emit checks the kind and the size", () => {
      assert.throws(() => owner.emit("bad kind"), InvalidArgumentError);
      assert.throws(() => owner.emit("big", "x".repeat(1024 * 1024 + 1)), InvalidArgumentError);
    });
  } finally {
    await observer.shutdown();
    await owner.shutdown();
  }
});

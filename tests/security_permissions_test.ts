/**
 * Per-node users on the embedded server. Every node process connects as its own user, allowed
 * to publish only its own heartbeat and events (and what the protocol needs); an actor on node A
 * tries to impersonate node B (a heartbeat saying B hosts nothing, a "down" event for B's actor,
 * an application event in B's name), to publish into another system, and to read other
 * processes' reply inboxes: the server refuses each. What A may publish on its own subjects
 * while claiming to be B, or to own B's actor, arrives but is ignored. B's actor is untouched
 * throughout.
 */
import assert from "node:assert/strict";
import { init } from "../mod.ts";
import { Counter } from "./runtime_actors_test.ts";
import { Probe } from "./support/probe_actor.ts";

Deno.test("a worker node may publish only on its own subjects; impersonation is refused or ignored", async () => {
  const name = `perm-${crypto.randomUUID().slice(0, 8)}`;
  const system = await init({ system: name, nodes: 2 });
  try {
    const [a, b] = system.localNodes;
    // Credentials of nodes are their own, and appear on no command line.
    const secret = system.credentials.pass!;
    for (const n of [a, b]) {
      const cmd = await Deno.readTextFile(`/proc/${n.pid}/cmdline`);
      assert.ok(!cmd.includes(secret), "no password on a node's command line");
    }
    const target = await system.spawn(Counter, { start: 1 }, { node: b.id, name: "target" });
    const probe = await system.spawn(Probe, {}, { node: a.id });
    const root = `actors.${name}`;
    const seen: string[] = [];
    const sub = system.nc.subscribe(">", {
      callback: (_e, m) => {
        // (The calls to the probe carry the forged payloads too: not what is looked for.)
        if (/^(\$|_INBOX)/.test(m.subject) || m.subject.startsWith(`${root}.rt.a.`)) return;
        if (m.string().includes("forged")) seen.push(m.subject);
      },
    });
    await system.nc.flush();
    const bInfo = system.nodes().find((n) => n.id === b.id)!;
    const hb = (node: string) => ({
      node,
      pid: bInfo.pid,
      host: bInfo.host,
      interval: 500,
      missed: 3,
      resources: {},
      used: {},
      placeable: true,
      rev: 1e9,
      seq: 1e9,
      actors: [],
      forged: true,
    });
    const down = {
      e: "down",
      id: "target",
      inc: 0,
      node: b.id,
      reason: "node",
      final: true,
      rev: 1e9,
      detail: "forged",
    };
    const gone = { e: "gone", id: "target", inc: 0, reason: "stopped", detail: "forged" };
    const app = (node: string) => ({ kind: "train.step", node, time: 0, seq: 0, data: "forged" });
    const apps: string[] = [];
    const off = system.on((e) => {
      if (e.type === "app" && e.event.data === "forged") apps.push(e.event.node);
    });
    const refusedPub = await probe.publish([
      { subject: `${root}.rt.hb.${b.id}`, json: hb(b.id) }, // B's heartbeat: refused
      { subject: `${root}.rt.ev.${b.id}`, json: down }, // B's events: refused
      { subject: `${root}.rt.ae.${b.id}`, json: app(b.id) }, // B's application events: refused
      { subject: `${root}.rt.ae.${a.id}`, json: app(b.id) }, // own subject, claiming B: ignored
      { subject: `actors.other.app.x`, json: { forged: true } }, // another system: refused
      { subject: `${root}.rt.hb.${a.id}`, json: hb(b.id) }, // own subject, claiming B: ignored
      { subject: `${root}.rt.ev.${a.id}`, json: gone }, // own events, not the owner: ignored
      { subject: `${root}.app.probe`, json: { forged: true } }, // allowed
    ]);
    assert.deepEqual(
      refusedPub.refused.map((r) => `${r.operation} ${r.subject}`).sort(),
      [
        `publish ${root}.rt.ev.${b.id}`,
        `publish ${root}.rt.ae.${b.id}`,
        `publish ${root}.rt.hb.${b.id}`,
        `publish actors.other.app.x`,
      ].sort(),
    );
    const refusedSub = await probe.subscribe("_INBOX.>");
    assert.deepEqual(refusedSub.refused.map((r) => r.operation), ["subscription"]);
    // Only what A may publish arrived.
    await new Promise((r) => setTimeout(r, 1600)); // past the heartbeat timeout
    assert.deepEqual(
      seen.sort(),
      [
        `${root}.app.probe`,
        `${root}.rt.ev.${a.id}`,
        `${root}.rt.hb.${a.id}`,
        `${root}.rt.ae.${a.id}`,
      ].sort(),
    );
    assert.deepEqual(apps, [], "no application event speaks for B");
    off();
    // B's actor is still incarnation 0, up, and answering.
    assert.equal(await target.add(1), 2);
    assert.equal((await target.whoami()).inc, 0);
    assert.equal(system.actors().find((x) => x.id === "target")?.state, "up");
    sub.unsubscribe();
  } finally {
    await system.shutdown();
  }
});

/**
 * A call that its caller sends again (an idempotent call, after a reconnection) runs once
 * (runtime/instance.ts): a copy that arrives while the call is queued or running is dropped, one
 * that arrives after the answer gets the same answer again.
 *
 * The actor runs in a node process behind a real nats-server; its ledger (tests/support/
 * sequence_actor.ts) counts the calls that ran twice. A passive subscriber on the actor's
 * subject counts the copies that reached it, so each case also shows that a call did go twice.
 */
import assert from "node:assert/strict";
import type { Msg } from "@nats-io/nats-core";
import { createInbox } from "@nats-io/nats-core";
import { init, type System } from "../mod.ts";
import { decodeFrame, encodeFrame } from "../internal_mod.ts";
import { Sequence } from "./support/sequence_actor.ts";

/** Counts the call frames sent to actor `id`, by reply subject (one per call made). */
function countCopies(system: System, id: string) {
  const copies = new Map<string, number>();
  const sub = system.nc.subscribe(`actors.${system.name}.rt.a.${id}`, {
    callback: (err, msg: Msg) => {
      if (err || !msg.reply) return;
      try {
        if (decodeFrame(msg.data).meta.k !== "call") return;
      } catch {
        return; // a part of a larger frame: these calls are small
      }
      copies.set(msg.reply, (copies.get(msg.reply) ?? 0) + 1);
    },
  });
  return { copies, stop: () => sub.unsubscribe() };
}

Deno.test("a call sent again runs once", async (t) => {
  const system = await init({ nodes: 1 });
  const node = system.localNodes[0].id;
  try {
    await t.step(
      "the caller's connection reconnects: its idempotent calls go again, each runs once",
      async () => {
        const a = await system.spawn(Sequence, { callers: 1, calls: 4 }, { node });
        const tap = countCopies(system, a.ref.id);
        try {
          await system.nc.flush();
          // Call 0 runs for a while; 1 to 3 wait in the mailbox behind it.
          const calls = [0, 1, 2, 3].map((n) =>
            a.take({ caller: 0, n, ms: n === 0 ? 1500 : 0 }, { idempotent: true })
          );
          await new Promise((r) => setTimeout(r, 300));
          // A real reconnection: the caller sends every pending idempotent call again, under
          // the same reply subject, as after a server that went away.
          await system.nc.reconnect();
          const got = await Promise.all(calls);
          assert.deepEqual(got, [0, 1, 2, 3]);
          await system.nc.flush();
          const twice = [...tap.copies.values()].filter((c) => c >= 2).length;
          assert.equal(twice, 4, `calls that reached the actor twice: ${twice} of 4`);
        } finally {
          tap.stop();
        }
        const l = await a.ledger({});
        assert.equal(l.repeats, 0, "no call ran twice");
        assert.equal(l.runs, 4, "every call ran");
        assert.equal(l.outOfOrder, 0);
        await system.stop(a);
      },
    );

    await t.step(
      "a copy that arrives after the answer (its reply was lost) gets the same answer",
      async () => {
        const a = await system.spawn(Sequence, { callers: 1, calls: 2 }, { node });
        const subject = `actors.${system.name}.rt.a.${a.ref.id}`;
        const answers: Uint8Array[] = [];
        let arrived: () => void = () => {};
        const reply = createInbox(`_INBOX`);
        const sub = system.nc.subscribe(reply, {
          callback: (err, msg) => {
            if (err) return;
            answers.push(msg.data);
            arrived();
          },
        });
        try {
          const next = () => new Promise<void>((r) => arrived = r);
          // The frame the caller sends for an idempotent call (`r`), published twice under one
          // reply subject, the second time only once the first was answered: as a resend after
          // a lost reply.
          const call = (r?: 1) =>
            encodeFrame({ k: "call", m: "take", t: 10_000, i: 0, ...(r ? { r } : {}) }, {
              caller: 0,
              n: 0,
            });
          let got = next();
          system.nc.publish(subject, call(1), { reply });
          await got;
          got = next();
          system.nc.publish(subject, call(1), { reply });
          await got;
          assert.equal(answers.length, 2);
          assert.deepEqual(decodeFrame(answers[0]).meta, { k: "ok" });
          assert.deepEqual(answers[1], answers[0], "the copy got the first answer's bytes");
          let l = await a.ledger({});
          assert.equal(l.runs, 1, "the call ran once");
          // Without `r` (a call its caller never sends again) a second delivery is a new call.
          const plain = createInbox(`_INBOX`);
          const sub2 = system.nc.subscribe(plain, { callback: () => arrived() });
          try {
            for (let i = 0; i < 2; i++) {
              got = next();
              system.nc.publish(subject, call(), { reply: plain });
              await got;
            }
          } finally {
            sub2.unsubscribe();
          }
          l = await a.ledger({});
          assert.equal(l.runs, 3, "a call not marked resendable runs each time it arrives");
          assert.equal(l.repeats, 2);
        } finally {
          sub.unsubscribe();
        }
        await system.stop(a);
      },
    );
  } finally {
    await system.shutdown();
  }
});

/**
 * Flow control of calls (runtime/flow.ts, runtime/instance.ts): a caller holds its calls back
 * while an actor's mailbox is full and sends them as room frees up, in the order it made them.
 *
 * The actor runs in a node process (a real nats-server in between); its ledger says which calls
 * ran, how often, and whether each caller's calls came in the order they were made. Refusals are
 * counted by the caller (`system.stats.refused`), so each step also shows that the mailbox did
 * fill up (without that, nothing here would test flow control).
 */
import assert from "node:assert/strict";
import {
  CallCancelledError,
  init,
  InvalidArgumentError,
  MailboxFullError,
  type System,
} from "../mod.ts";
import { Sequence } from "./support/sequence_actor.ts";
import { liveMemory } from "./support/ledger_actor.ts";
import { waitUntil } from "./support/faults.ts";

const MiB = 1024 * 1024;

/** Every call of `callers × calls` ran exactly once, in order per caller. */
async function assertLedger(
  a: {
    ledger(
      x: object,
    ): Promise<{ ran: Uint8Array; runs: number; repeats: number; outOfOrder: number }>;
  },
  total: number,
) {
  const l = await a.ledger({});
  assert.equal(l.repeats, 0, "no call ran twice");
  assert.equal(l.outOfOrder, 0, "each caller's calls ran in the order it made them");
  assert.equal(l.runs, total, "every call ran");
  const missing = l.ran.findIndex((v) => v !== 1);
  assert.equal(missing, -1, `call ${missing} did not run`);
}

/** Waits (up to 10 s) until `s` has heard of actor `id` being up. */
async function knows(s: System, id: string) {
  for (let i = 0; i < 200; i++) {
    if (s.introspect().actors.some((x) => x.id === id && x.state === "up")) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the joined system never heard of actor ${id}`);
}

Deno.test("flow control: calls held back while the mailbox is full, sent as room frees up", async (t) => {
  const system = await init({ nodes: 1 });
  const node = system.localNodes[0].id;
  try {
    await t.step(
      "one caller, 5,000 calls in flight, mailbox 1,024: answered once, in order",
      async () => {
        const N = 5000;
        const a = await system.spawn(Sequence, { callers: 1, calls: N }, { node, mailbox: 1024 });
        const refused0 = system.stats.refused;
        // The first call takes a while, so the others arrive at a busy actor. Without flow
        // control, those past the mailbox's 1,024 failed with MailboxFullError; now the caller
        // never has more out than the mailbox holds.
        const got = await Promise.all(
          Array.from({ length: N }, (_, n) => a.take({ caller: 0, n, ms: n === 0 ? 300 : 0 })),
        );
        got.forEach((v, n) => assert.equal(v, n, `call ${n} got the reply of call ${v}`));
        await assertLedger(a, N);
        console.log(`  ${N} calls, ${system.stats.refused - refused0} refusals along the way`);
        await system.stop(a);
      },
    );

    await t.step(
      "three callers, mailbox 16: refused calls go again, ahead of later ones",
      async () => {
        // One caller alone never has more calls out than the mailbox holds (plus the running
        // one); three together overrun it, and are refused.
        const C = 3;
        const N = 1000;
        const server = system.server!;
        const others: System[] = [];
        try {
          for (let i = 1; i < C; i++) {
            others.push(await init({ nats: server.url, ...server.credentials }));
          }
          const a = await system.spawn(Sequence, { callers: C, calls: N }, { node, mailbox: 16 });
          const handles = [a, ...others.map((s) => s.handle(Sequence, a.ref))];
          const all = [system, ...others];
          const refused0 = all.reduce((x, s) => x + s.stats.refused, 0);
          const got = await Promise.all(handles.map((h, c) =>
            Promise.all(
              Array.from({ length: N }, (_, n) => h.take({ caller: c, n, ms: n === 0 ? 300 : 0 })),
            )
          ));
          got.forEach((xs, c) =>
            xs.forEach((v, n) => assert.equal(v, c * N + n, `caller ${c} call ${n} got ${v}`))
          );
          const refused = all.reduce((x, s) => x + s.stats.refused, 0) - refused0;
          assert.ok(refused > 0, "the mailbox filled up and refused calls (which were sent again)");
          await assertLedger(a, C * N);
          console.log(`  ${C * N} calls, ${refused} refusals along the way`);
          await system.stop(a);
        } finally {
          for (const s of others) await s.shutdown();
        }
      },
    );

    await t.step("failFast still gets MailboxFullError, and such a call never runs", async () => {
      const a = await system.spawn(Sequence, { callers: 3, calls: 10 }, { node, mailbox: 2 });
      const server = system.server!;
      const other = await init({ nats: server.url, ...server.credentials });
      let busy: Promise<number>, queued: Promise<number>[], held: Promise<number>[];
      try {
        await knows(other, a.ref.id);
        // The first call keeps the actor busy well past what follows; two more fill its mailbox.
        // The other process sends only once heartbeats show the mailbox full, whatever the load.
        busy = a.take({ caller: 0, n: 0, ms: 8000 });
        queued = [1, 2].map((n) => a.take({ caller: 0, n }));
        await waitUntil("the actor runs one call and holds two", () => {
          const x = other.introspect().actors.find((y) => y.id === a.ref.id);
          return x?.queued === 2 && x.busy === true;
        }, 6000);
        // Another process has nothing out to the actor: its call is sent, and the full mailbox
        // refuses it.
        const h = other.handle(Sequence, a.ref);
        await assert.rejects(h.take({ caller: 1, n: 0 }, { failFast: true }), MailboxFullError);
        assert.equal(other.stats.refused, 1, "the actor refused it");
        // This process already has as many calls out as the mailbox holds (plus the running
        // one): the call fails here without being sent.
        held = [3, 4].map((n) => a.take({ caller: 0, n }));
        const refused = system.stats.refused;
        await assert.rejects(a.take({ caller: 2, n: 0 }, { failFast: true }), MailboxFullError);
        assert.equal(system.stats.refused, refused, "not sent, so not refused by the actor");
      } finally {
        await other.shutdown();
      }
      assert.deepEqual(await Promise.all([busy, ...queued, ...held]), [0, 1, 2, 3, 4]);
      const l = await a.ledger({});
      assert.equal(l.runs, 5, "the failFast calls did not run");
      assert.equal(l.ran[10] + l.ran[20], 0);
      assert.equal(l.outOfOrder, 0);
      await system.stop(a);
    });

    await t.step(
      "a deadline passing while held back gives MailboxFullError; the call never ran",
      async () => {
        const a = await system.spawn(Sequence, { callers: 1, calls: 10 }, { node, mailbox: 1 });
        const busy = a.take({ caller: 0, n: 0, ms: 3000 });
        await new Promise((r) => setTimeout(r, 200));
        const queued = a.take({ caller: 0, n: 1 });
        // The mailbox (1) is full until the running call ends, long after these deadlines; the
        // caller waits for the answers of its own calls there before sending these again.
        const late = [2, 3].map((n) =>
          assert.rejects(a.take({ caller: 0, n }, { timeoutMs: 1000 }), MailboxFullError)
        );
        await Promise.all(late);
        assert.deepEqual(await Promise.all([busy, queued]), [0, 1]);
        const l = await a.ledger({});
        assert.equal(l.runs, 2, "the calls that were held back never ran");
        await system.stop(a);
      },
    );

    await t.step(
      "a held-back call can be cancelled; maxPendingCalls refuses past its bound",
      async () => {
        const a = await system.spawn(Sequence, { callers: 1, calls: 10 }, { node, mailbox: 1 });
        const busy = a.take({ caller: 0, n: 0, ms: 2000 });
        await new Promise((r) => setTimeout(r, 200));
        const queued = a.take({ caller: 0, n: 1 });
        const ac = new AbortController();
        const cancelled = a.take({ caller: 0, n: 5 }, { signal: ac.signal });
        const kept = a.take({ caller: 0, n: 2 });
        await assert.rejects(
          a.take({ caller: 0, n: 6 }, { maxPendingCalls: 4 }),
          MailboxFullError,
          "4 calls pending: a fifth with maxPendingCalls 4 is refused at once",
        );
        await assert.rejects(
          a.take({ caller: 0, n: 6 }, { maxPendingCalls: 0 }),
          InvalidArgumentError,
        );
        ac.abort();
        await assert.rejects(cancelled, CallCancelledError);
        assert.deepEqual(await Promise.all([busy, queued, kept]), [0, 1, 2]);
        const l = await a.ledger({});
        assert.equal(l.runs, 3);
        assert.equal(l.outOfOrder, 0);
        await system.stop(a);
      },
    );
  } finally {
    await system.shutdown();
  }
});

Deno.test("flow control soak: 10 callers × 5,000 calls in flight, each answered once, in order, memory flat", async () => {
  const CALLERS = 10;
  const N = 5000;
  const ROUNDS = 3;
  // Ten callers' systems in this one process, on a shared machine, read their replies in
  // backlogs long enough to delay the node's heartbeats behind them; liveness is not what is
  // tested here, so the node allows more missed beats before it counts as dead.
  const system = await init({ nodes: 1, missedHeartbeats: 20 });
  const callers: System[] = [];
  try {
    const server = system.server!;
    for (let i = 0; i < CALLERS; i++) {
      callers.push(await init({ nats: server.url, ...server.credentials }));
    }
    const node = system.localNodes[0].id;
    const samples: { caller: number; actor: number }[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const a = await system.spawn(Sequence, { callers: CALLERS, calls: N }, {
        node,
        mailbox: 1024,
      });
      const handles = await Promise.all(callers.map((s) => s.handle(Sequence, a.ref)));
      const refused0 = callers.reduce((x, s) => x + s.stats.refused, 0);
      const got = await Promise.all(handles.map((h, c) =>
        Promise.all(
          Array.from({ length: N }, (_, n) => h.take({ caller: c, n }, { timeoutMs: 120_000 })),
        )
      ));
      got.forEach((xs, c) =>
        xs.forEach((v, n) => assert.equal(v, c * N + n, `caller ${c} call ${n} got ${v}`))
      );
      const refused = callers.reduce((x, s) => x + s.stats.refused, 0) - refused0;
      assert.ok(refused > 0, "the mailbox filled up");
      await assertLedger(a, CALLERS * N);
      const m = await a.memory({});
      const here = liveMemory();
      samples.push({
        caller: (here.heap + here.external) / MiB,
        actor: (m.heap + m.external) / MiB,
      });
      console.log(
        `  round ${round}: ${CALLERS * N} calls, ${refused} refusals; live MiB callers ` +
          `${samples[round].caller.toFixed(1)}, actor's node ${samples[round].actor.toFixed(1)}` +
          ` (resident ${(here.rss / MiB).toFixed(0)} / ${(m.rss / MiB).toFixed(0)})`,
      );
      await system.stop(a);
    }
    // After the first (warm-up) round, 100,000 more calls: a residue of 100 bytes per call would
    // be 9.5 MiB. What remains referenced after a full collection may grow by less than 8 MiB.
    const first = samples[0];
    const last = samples[ROUNDS - 1];
    assert.ok(
      last.caller - first.caller < 8,
      `callers: ${first.caller.toFixed(1)} → ${last.caller.toFixed(1)} MiB`,
    );
    assert.ok(
      last.actor - first.actor < 8,
      `actor: ${first.actor.toFixed(1)} → ${last.actor.toFixed(1)} MiB`,
    );
  } finally {
    for (const s of callers) await s.shutdown();
    await system.shutdown();
  }
});

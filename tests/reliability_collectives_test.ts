/**
 * The defences of the collectives against a flood of bogus messages, on a real nats-server:
 * verified gathers (a rank is taken only by the part its check accepts, whatever arrived
 * first, and a genuine part pushed out by a flood is taken when sent again), bounded frames,
 * bounded bytes of transfers in progress, bounded receive queues.
 */
import assert from "node:assert/strict";
import { headers } from "@nats-io/nats-core";
import { init, z } from "../mod.ts";
import { PART_HEADER, Reassembler } from "../runtime/chunks.ts";
import { encodeFrame } from "../runtime/codec.ts";
import { FrameError } from "../runtime/errors.ts";

const Part = z.object({ from: z.string(), n: z.number() });

Deno.test("verified gather: forgeries that arrive first do not take a rank; a flood cannot starve it", async () => {
  const system = await init({});
  try {
    const c = system.collectives;
    const subject = `${system.namespace}.vg`;
    const g = await c.gather(subject, 2, { schema: Part, verified: true, maxCandidates: 3 });
    // Rank 0: two forgeries, then the genuine part, then the check.
    await c.contribute(subject, 0, { from: "rogue", n: 1 });
    await c.contribute(subject, 0, { from: "rogue", n: 2 });
    await c.contribute(subject, 0, { from: "real", n: 0 });
    // Rank 1: the genuine part, then a flood of 5 forgeries (only 3 are held): it is pushed out.
    await c.contribute(subject, 1, { from: "real", n: 1 });
    for (let i = 0; i < 5; i++) await c.contribute(subject, 1, { from: "rogue", n: 10 + i });
    await system.nc.flush();
    await new Promise((r) => setTimeout(r, 100));
    g.verify(0, (p) => p.from === "real");
    g.verify(1, (p) => p.from === "real");
    assert.deepEqual(g.missing(), [1], "rank 1's genuine part was pushed out by the flood");
    // Checked on arrival from now on: more forgeries are refused, the resend is taken.
    await c.contribute(subject, 1, { from: "rogue", n: 99 });
    await c.contribute(subject, 1, { from: "real", n: 1 });
    const parts = await g.result;
    assert.deepEqual(parts, [{ from: "real", n: 0 }, { from: "real", n: 1 }]);
    // Refused: 2 forgeries of rank 0; of rank 1 the genuine one and 2 forgeries pushed out,
    // the 3 held forgeries, and the one checked on arrival.
    assert.equal(g.rejected, 2 + 3 + 3 + 1);

    // An unverified gather takes the first well-formed part: what a forger relies on.
    const subject2 = `${system.namespace}.naive`;
    const naive = await c.gather(subject2, 1, { schema: Part });
    await c.contribute(subject2, 0, { from: "rogue", n: 1 });
    await c.contribute(subject2, 0, { from: "real", n: 0 });
    assert.deepEqual(await naive.result, [{ from: "rogue", n: 1 }]);
  } finally {
    await system.shutdown();
  }
});

Deno.test("oversized messages and announced frames are refused before anything is allocated", async () => {
  const system = await init({});
  try {
    const c = system.collectives;
    const subject = `${system.namespace}.big`;
    const g = await c.gather(subject, 1, { schema: Part, maxFrameBytes: 4096, timeoutMs: 5000 });
    system.nc.publish(`${subject}.0`, encodeFrame({ k: "bc" }, { from: "x".repeat(8192), n: 0 }));
    const h = headers();
    h.set(PART_HEADER, `${"cd".repeat(12)} 0 4 0 1024 ${2 ** 40}`);
    system.nc.publish(`${subject}.0`, new Uint8Array(1024), { headers: h });
    await c.contribute(subject, 0, { from: "real", n: 7 });
    assert.deepEqual(await g.result, [{ from: "real", n: 7 }]);
    assert.equal(g.rejected, 2);

    const r = await c.subscribe(`${system.namespace}.q`, { schema: Part, maxQueue: 3 });
    for (let i = 0; i < 5; i++) await c.broadcast(`${system.namespace}.q`, { from: "s", n: i });
    await system.nc.flush();
    await new Promise((res) => setTimeout(res, 100));
    assert.equal(r.rejected, 2, "the two oldest values were pushed out of the full queue");
    assert.deepEqual([(await r.next()).value.n, (await r.next()).value.n], [2, 3]);
    r.close();
  } finally {
    await system.shutdown();
  }
});

Deno.test("transfers in progress hold at most maxPendingBytes: a flood of unfinished frames evicts the oldest", () => {
  const re = new Reassembler({ maxFrameBytes: 1 << 20, maxPendingBytes: 3 << 20 });
  for (let i = 0; i < 50; i++) {
    const id = i.toString(16).padStart(24, "0");
    // The first of two parts of a 1 MiB frame that never completes.
    re.accept(
      { id, index: 0, count: 2, offset: 0, length: 16, total: 1 << 20 },
      new Uint8Array(16),
    );
    assert.ok(re.pendingBytes <= 3 << 20, `${re.pendingBytes} bytes pending`);
  }
  assert.equal(re.pending, 3);
  assert.throws(
    () =>
      re.accept(
        { id: "ff".repeat(12), index: 0, count: 2, offset: 0, length: 16, total: 2 << 20 },
        new Uint8Array(16),
      ),
    FrameError,
  );
});

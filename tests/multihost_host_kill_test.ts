/**
 * A whole host dies: every process on it (its nats-server and its node, or the driver) is
 * SIGKILLed as step 3's calls go out.
 *
 * - A GPU host, with a spare GPU host in the cluster: K = 2 can be kept, so the worker restarts
 *   on the spare, the run rolls back to its checkpoint and ends on the one-host run's bits.
 * - A GPU host, with no spare: the worker has nowhere to go, so the run stops with
 *   WorkersUnavailableError (once no node had room for it for 15 s, not at the 60 s placement
 *   timeout or after 5 rollbacks), its checkpoints kept; once another GPU host joins, `--resume`
 *   continues to the same bits.
 * - The driver's host: the run stops there (the workers, whose owner is gone, are stopped by
 *   their nodes); `--resume` from another host continues it from the last checkpoint to the same
 *   bits.
 *
 * The object store has 3 replicas on 4 servers, so losing any one host keeps it.
 */
import assert from "node:assert/strict";
import { processesWithTag } from "./support/faults.ts";
import {
  assertNoReport,
  assertSameBits,
  assertWorkersUnavailable,
  CKPT,
  finishedReport,
  resumeToSameBits,
  runAtCall,
  withScenario,
} from "./support/multihost.ts";

const STEPS = 6;

Deno.test("several hosts: a GPU host killed whole mid-step; the worker moves to the spare host, same bits", async () => {
  await withScenario(
    "hd-multihost-kill-",
    { steps: STEPS, gpuHosts: 3, lab: { nodes: 2 } },
    async (s) => {
      const { t } = s;
      const [victim, , spare] = t.gpus;
      const { r, fired } = await runAtCall(s, CKPT, {
        // The spare joins once the two workers are placed (on gpu1 and gpu2).
        watch: (c) => {
          if (c.method === "load" && t.nodes.length === 2) t.startNode(spare);
        },
        method: "step",
        step: 3,
        act: () => t.lab.killHost(victim),
      });
      const pids = await fired;
      assert.ok(pids && pids.length >= 2, `the host's server and node were killed: ${pids}`);
      const report = await finishedReport(s, r);
      assert.ok(report.recoveries >= 1, `rollbacks: ${report.recoveries}`);
      await assertSameBits(s);
    },
  );
});

Deno.test("several hosts: a GPU host killed whole with no spare; the run stops naming the worker, --resume once a host joins ends on the same bits", async () => {
  // gpu3 has a server but no node until after the failure: the host that comes back.
  const setup = { steps: STEPS, gpuHosts: 3, lab: { nodes: 2 }, reference: { checkpointEvery: 2 } };
  await withScenario("hd-multihost-nospare-", setup, async (s) => {
    const { t } = s;
    const [victim, , later] = t.gpus;
    const { r, fired } = await runAtCall(s, CKPT, {
      method: "step",
      step: 3,
      act: () => t.lab.killHost(victim),
    });
    assert.ok(fired, "the GPU host was killed at step 3");
    assertWorkersUnavailable(r);
    assert.match(r.stderr, /cannot be placed again: no node had room/);
    assert.match(r.stderr, /rerun with --resume/);
    await assertNoReport(s, "the run stopped, yet wrote report.json");
    const kept = [];
    for await (const e of Deno.readDir(`${s.out}/checkpoints`)) kept.push(e.name);
    assert.ok(kept.some((n) => /^step-0000\d\d$/.test(n)), `checkpoints kept: ${kept}`);

    t.startNode(later);
    await resumeToSameBits(s, CKPT);
  });
});

Deno.test("several hosts: the driver's host killed whole mid-step; --resume from another host ends on the same bits", async () => {
  // gpu3 has a server but no node: the operator's next host for the driver.
  const setup = { steps: STEPS, gpuHosts: 3, lab: { nodes: 2 }, reference: { checkpointEvery: 2 } };
  await withScenario("hd-multihost-dkill-", setup, async (s) => {
    const { t, tag } = s;
    const { r, fired } = await runAtCall(s, CKPT, {
      method: "step",
      step: 3,
      act: () => t.lab.killHost(t.driver),
    });
    assert.ok(fired, "the driver's host was killed at step 3");
    assert.equal(r.signal, "SIGKILL", `the CLI was killed with its host:\n${r.stderr}`);
    await assertNoReport(s, "the run was cut short, yet wrote report.json");
    // The nodes on the GPU hosts live on (their workers end with their owner).
    assert.equal(
      t.nodes.filter((n) => processesWithTag(tag).includes(n.pid)).length,
      2,
      "both GPU hosts' nodes still run",
    );

    await resumeToSameBits(s, CKPT, t.gpus[2]);
  });
});

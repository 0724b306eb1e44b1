/**
 * One GPU host's link is cut (its veth goes down: packets are lost, nothing is refused) as step
 * 3's calls go out, then restored.
 *
 * - For 0.5 s: TCP carries what was in flight once the link is back (its retransmission makes
 *   that step about 1.2 s long here) and the run ends on the one-host run's bits. The nodes get a
 *   5 s liveness window (`--missed-heartbeats 10`, as on a network with hiccups): with the
 *   default 1.5 s, a loaded machine can stretch the silence past it, and the partition below
 *   follows. The cut side may still take the driver (1.5 s) for dead; it keeps its worker through
 *   the owner grace. A loaded machine may still stretch a silence past 5 s, which costs a
 *   rollback, so the rollbacks are printed, not asserted.
 * - For 3 s, twice that: the driver takes the host's node for dead, its worker restarts there once
 *   the host is back, the run rolls back to its last checkpoint and ends on the same bits. The cut
 *   side also takes the driver's node for dead, and TCP's retransmission backoff may heal the
 *   route between the servers one way seconds after the other, so it may do so again after the
 *   link is up: the node keeps its worker through the owner grace (10 s), and the driver's restart
 *   takes that old worker's place on the node.
 * - Until the run stops: no node has room for the lost worker, so after 15 s the run stops with
 *   WorkersUnavailableError, its checkpoints kept; once the link is back, `--resume` continues it
 *   to the same bits.
 */
import assert from "node:assert/strict";
import {
  assertSameBits,
  assertWorkersUnavailable,
  CKPT,
  finishedReport,
  resumeToSameBits,
  runAtCall,
  withScenario,
} from "./support/multihost.ts";

const STEPS = 6;

async function cutRun(cutMs: number, nodeArgs: string[] = []) {
  const setup = { steps: STEPS, gpuHosts: 2, lab: { nodeArgs } };
  return await withScenario("hd-multihost-link-", setup, async (s) => {
    const { t } = s;
    const victim = t.gpus[0];
    const { r, fired } = await runAtCall(s, CKPT, {
      method: "step",
      step: 3,
      act: () =>
        t.lab.cut(victim).then(() => new Promise<void>((r) => setTimeout(r, cutMs)))
          .then(() => t.lab.restore(victim)),
    });
    assert.ok(fired, "the link was cut during step 3");
    const report = await finishedReport(s, r);
    await assertSameBits(s);
    return report;
  });
}

Deno.test("several hosts: a GPU host's link cut for 0.5 s mid-step and restored; same bits", async () => {
  const report = await cutRun(500, ["--missed-heartbeats", "10"]);
  console.log(`  rollbacks: ${report.recoveries}`);
});

Deno.test("several hosts: a GPU host's link cut for 3 s mid-step; a rollback, same bits", async () => {
  const report = await cutRun(3000);
  // Cut for longer than the 1.5 s a node may be silent: its worker was lost and restarted.
  assert.ok(report.recoveries >= 1, `rollbacks: ${report.recoveries}`);
  console.log(`  rollbacks: ${report.recoveries}`);
});

Deno.test("several hosts: a GPU host's link cut for longer than the driver waits; the run stops, --resume once it is back ends on the same bits", async () => {
  const setup = { steps: STEPS, gpuHosts: 2, reference: { checkpointEvery: 2 } };
  await withScenario("hd-multihost-longcut-", setup, async (s) => {
    const { t } = s;
    const victim = t.gpus[0];
    let release: () => void = () => {};
    const { r, fired } = await runAtCall(s, CKPT, {
      method: "step",
      step: 3,
      // Cut until the run has stopped: longer than the 15 s a rollback waits for room.
      act: () => {
        const over = new Promise<void>((r) => release = r);
        return t.lab.cut(victim).then(() => over).then(() => t.lab.restore(victim));
      },
      settle: () => release(),
    });
    assert.ok(fired, "the link was cut during step 3");
    assertWorkersUnavailable(r);
    // The cut host's node outlives the run (its worker, whose owner is gone, was stopped): a
    // resumed run finds both GPU hosts once the link is back.
    await resumeToSameBits(s, CKPT);
  });
});

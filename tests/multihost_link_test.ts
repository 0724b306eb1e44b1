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
import { connectNats } from "../runtime/connect.ts";
import { leftovers, newTag, sameFile, tapCalls, within } from "./support/faults.ts";
import { driverRun, oneHostRun, startTrainingLab } from "./support/multihost.ts";
import { writeTinySetup } from "./support/tiny_run.ts";

const STEPS = 6;
const CKPT = ["--checkpoint-every", "2"];

async function cutRun(cutMs: number, nodeArgs: string[] = []) {
  const dir = await Deno.makeTempDir({ prefix: "hd-multihost-link-" });
  const tag = newTag();
  let t: Awaited<ReturnType<typeof startTrainingLab>> | undefined;
  try {
    await writeTinySetup(dir);
    const ref = await oneHostRun(dir, STEPS);
    t = await startTrainingLab(tag, 2, { nodeArgs });
    const lab = t;
    const victim = t.gpus[0];
    // The test process watches the calls from the bridge, as an operator's machine would.
    const nc = await connectNats(t.servers.map((s) => s.url), { user: t.user, pass: t.pass });
    let cutAt = 0;
    let restored: Promise<void> | undefined;
    const stopTap = tapCalls({ name: "default", nc }, (c) => {
      const v = c.value as { step?: number };
      if (cutAt || c.method !== "step" || v.step !== 3) return;
      cutAt = performance.now();
      restored = lab.lab.cut(victim).then(() => new Promise<void>((r) => setTimeout(r, cutMs)))
        .then(() => lab.lab.restore(victim));
    });
    const out = `${dir}/hosts`;
    let r;
    try {
      r = await within(
        driverRun(t, dir, out, STEPS, ["--checkpoint-every", "2"]),
        150_000,
        "the run across hosts",
      );
    } finally {
      stopTap();
      await restored;
      await nc.close();
    }
    assert.ok(cutAt > 0, "the link was cut during step 3");
    assert.equal(r.code, 0, `the finetune CLI failed:\n${r.stderr}`);
    const report = JSON.parse(await Deno.readTextFile(`${out}/report.json`));
    assert.deepEqual(report.steps.map((s: { step: number }) => s.step), [0, 1, 2, 3, 4, 5]);
    assert.ok(
      await sameFile(`${ref}/model.safetensors`, `${out}/model.safetensors`),
      "the weights equal the one-host run's",
    );
    return report as { recoveries: number };
  } finally {
    await t?.stop();
    assert.deepEqual(await leftovers(tag), []);
    await Deno.remove(dir, { recursive: true });
  }
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
  const dir = await Deno.makeTempDir({ prefix: "hd-multihost-longcut-" });
  const tag = newTag();
  let t: Awaited<ReturnType<typeof startTrainingLab>> | undefined;
  try {
    await writeTinySetup(dir);
    const ref = await oneHostRun(dir, STEPS, { checkpointEvery: 2 });
    t = await startTrainingLab(tag, 2);
    const lab = t;
    const victim = t.gpus[0];
    const nc = await connectNats(t.servers.map((s) => s.url), { user: t.user, pass: t.pass });
    let restored: Promise<void> | undefined;
    let release: () => void = () => {};
    const stopTap = tapCalls({ name: "default", nc }, (c) => {
      const v = c.value as { step?: number };
      if (restored || c.method !== "step" || v.step !== 3) return;
      // Cut until the run has stopped: longer than the 15 s a rollback waits for room.
      const over = new Promise<void>((r) => release = r);
      restored = lab.lab.cut(victim).then(() => over).then(() => lab.lab.restore(victim));
    });
    const out = `${dir}/hosts`;
    let r;
    try {
      r = await within(driverRun(t, dir, out, STEPS, CKPT), 150_000, "the run across hosts");
    } finally {
      stopTap();
      release();
      await restored;
    }
    assert.ok(restored, "the link was cut during step 3");
    assert.equal(r.code, 1, `the run stopped with an error:\n${r.stderr}`);
    assert.match(
      r.stderr,
      /finetune: WorkersUnavailableError: worker \d \(needs \{"gpu":1\}\) cannot be placed again/,
    );
    assert.doesNotMatch(r.stderr, /giving up after/, "it did not spend its rollbacks");
    // The cut host's node outlives the run (its worker, whose owner is gone, was stopped): a
    // resumed run finds both GPU hosts once the link is back.
    const resumed = await within(
      driverRun(t, dir, out, STEPS, [...CKPT, "--resume", out]),
      150_000,
      "the resumed run",
    );
    await nc.close();
    assert.equal(resumed.code, 0, `the resumed run failed:\n${resumed.stderr}`);
    assert.match(resumed.stderr, /resumed from .*step-0000\d\d at step \d/);
    assert.ok(
      await sameFile(`${ref}/model.safetensors`, `${out}/model.safetensors`),
      "the resumed run ends on the one-host run's bits",
    );
  } finally {
    await t?.stop();
    assert.deepEqual(await leftovers(tag), []);
    await Deno.remove(dir, { recursive: true });
  }
});

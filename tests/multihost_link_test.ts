/**
 * One GPU host's link is cut (its veth goes down: packets are lost, nothing is refused) as a
 * step's calls go out, for 3 s, twice the 1.5 s after which a silent node counts as dead, and
 * then restored. The driver declares the node gone, the worker there restarts once the host is
 * back, the run rolls back to its last checkpoint and ends on the bits of the same run on one
 * host.
 */
import assert from "node:assert/strict";
import { connectNats } from "../runtime/connect.ts";
import { leftovers, newTag, sameFile, tapCalls, within } from "./support/faults.ts";
import { driverRun, oneHostRun, startTrainingLab } from "./support/multihost.ts";
import { writeTinySetup } from "./support/tiny_run.ts";

const STEPS = 6;
const CUT_MS = 3000;

Deno.test("several hosts: a GPU host's link cut for 3 s mid-step and restored; the run completes on the same bits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-multihost-link-" });
  const tag = newTag();
  let t: Awaited<ReturnType<typeof startTrainingLab>> | undefined;
  try {
    await writeTinySetup(dir);
    const ref = await oneHostRun(dir, STEPS);
    t = await startTrainingLab(tag, 2);
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
      restored = lab.lab.cut(victim).then(() => new Promise<void>((r) => setTimeout(r, CUT_MS)))
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
    console.log(
      r.stderr.split("\n").filter((l) => /again|gone|died|roll|generation|restart/i.test(l))
        .map((l) => `  | ${l}`).join("\n"),
    );
    const report = JSON.parse(await Deno.readTextFile(`${out}/report.json`));
    assert.deepEqual(report.steps.map((s: { step: number }) => s.step), [0, 1, 2, 3, 4, 5]);
    // Cut for longer than the 1.5 s a node may be silent: its worker was lost and restarted.
    assert.ok(report.recoveries >= 1, `rollbacks: ${report.recoveries}`);
    assert.ok(
      await sameFile(`${ref}/model.safetensors`, `${out}/model.safetensors`),
      "the weights equal the one-host run's",
    );
  } finally {
    await t?.stop();
    assert.deepEqual(await leftovers(tag), []);
    await Deno.remove(dir, { recursive: true });
  }
});

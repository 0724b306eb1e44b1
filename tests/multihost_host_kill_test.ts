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
import { connectNats } from "../runtime/connect.ts";
import {
  leftovers,
  newTag,
  processesWithTag,
  sameFile,
  tapCalls,
  within,
} from "./support/faults.ts";
import { driverRun, oneHostRun, startTrainingLab } from "./support/multihost.ts";
import { writeTinySetup } from "./support/tiny_run.ts";

const STEPS = 6;
const CKPT = ["--checkpoint-every", "2"];

Deno.test("several hosts: a GPU host killed whole mid-step; the worker moves to the spare host, same bits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-multihost-kill-" });
  const tag = newTag();
  let t: Awaited<ReturnType<typeof startTrainingLab>> | undefined;
  try {
    await writeTinySetup(dir);
    const ref = await oneHostRun(dir, STEPS);
    t = await startTrainingLab(tag, 3, { nodes: 2 });
    const lab = t;
    const [victim, , spare] = t.gpus;
    const nc = await connectNats(t.servers.map((s) => s.url), { user: t.user, pass: t.pass });
    let killed: Promise<number[]> | undefined;
    const stopTap = tapCalls({ name: "default", nc }, (c) => {
      // The spare joins once the two workers are placed (on gpu1 and gpu2).
      if (c.method === "load" && lab.nodes.length === 2) lab.startNode(spare);
      if (killed || c.method !== "step" || (c.value as { step?: number }).step !== 3) return;
      killed = lab.lab.killHost(victim);
    });
    const out = `${dir}/hosts`;
    let r;
    try {
      r = await within(driverRun(t, dir, out, STEPS, CKPT), 150_000, "the run across hosts");
    } finally {
      stopTap();
      await nc.close();
    }
    const pids = await killed;
    assert.ok(pids && pids.length >= 2, `the host's server and node were killed: ${pids}`);
    assert.equal(r.code, 0, `the finetune CLI failed:\n${r.stderr}`);
    const report = JSON.parse(await Deno.readTextFile(`${out}/report.json`));
    assert.deepEqual(report.steps.map((s: { step: number }) => s.step), [0, 1, 2, 3, 4, 5]);
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

Deno.test("several hosts: a GPU host killed whole with no spare; the run stops naming the worker, --resume once a host joins ends on the same bits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-multihost-nospare-" });
  const tag = newTag();
  let t: Awaited<ReturnType<typeof startTrainingLab>> | undefined;
  try {
    await writeTinySetup(dir);
    const ref = await oneHostRun(dir, STEPS, { checkpointEvery: 2 });
    // gpu3 has a server but no node until after the failure: the host that comes back.
    t = await startTrainingLab(tag, 3, { nodes: 2 });
    const lab = t;
    const [victim, , later] = t.gpus;
    const nc = await connectNats(t.servers.map((s) => s.url), { user: t.user, pass: t.pass });
    let killed: Promise<number[]> | undefined;
    const stopTap = tapCalls({ name: "default", nc }, (c) => {
      if (killed || c.method !== "step" || (c.value as { step?: number }).step !== 3) return;
      killed = lab.lab.killHost(victim);
    });
    const out = `${dir}/hosts`;
    let r;
    try {
      r = await within(driverRun(t, dir, out, STEPS, CKPT), 150_000, "the run across hosts");
    } finally {
      stopTap();
    }
    assert.ok(killed, "the GPU host was killed at step 3");
    assert.equal(r.code, 1, `the run stopped with an error:\n${r.stderr}`);
    assert.match(
      r.stderr,
      /finetune: WorkersUnavailableError: worker \d \(needs \{"gpu":1\}\) cannot be placed again: no node had room/,
    );
    assert.match(r.stderr, /rerun with --resume/);
    assert.doesNotMatch(r.stderr, /giving up after/, "it did not spend its rollbacks");
    await Deno.stat(`${out}/report.json`).then(
      () => assert.fail("the run stopped, yet wrote report.json"),
      () => {},
    );
    const kept = [];
    for await (const e of Deno.readDir(`${out}/checkpoints`)) kept.push(e.name);
    assert.ok(kept.some((n) => /^step-0000\d\d$/.test(n)), `checkpoints kept: ${kept}`);

    lab.startNode(later);
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

Deno.test("several hosts: the driver's host killed whole mid-step; --resume from another host ends on the same bits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-multihost-dkill-" });
  const tag = newTag();
  let t: Awaited<ReturnType<typeof startTrainingLab>> | undefined;
  try {
    await writeTinySetup(dir);
    const ref = await oneHostRun(dir, STEPS, { checkpointEvery: 2 });
    // gpu3 has a server but no node: the operator's next host for the driver.
    t = await startTrainingLab(tag, 3, { nodes: 2 });
    const lab = t;
    const nc = await connectNats(t.servers.map((s) => s.url), { user: t.user, pass: t.pass });
    let killed: Promise<number[]> | undefined;
    const stopTap = tapCalls({ name: "default", nc }, (c) => {
      if (killed || c.method !== "step" || (c.value as { step?: number }).step !== 3) return;
      killed = lab.lab.killHost(lab.driver);
    });
    const out = `${dir}/hosts`;
    let r;
    try {
      r = await within(driverRun(t, dir, out, STEPS, CKPT), 150_000, "the run across hosts");
    } finally {
      stopTap();
    }
    assert.ok(killed, "the driver's host was killed at step 3");
    assert.equal(r.signal, "SIGKILL", `the CLI was killed with its host:\n${r.stderr}`);
    await Deno.stat(`${out}/report.json`).then(
      () => assert.fail("the run was cut short, yet wrote report.json"),
      () => {},
    );
    // The nodes on the GPU hosts live on (their workers end with their owner).
    assert.equal(
      t.nodes.filter((n) => processesWithTag(tag).includes(n.pid)).length,
      2,
      "both GPU hosts' nodes still run",
    );

    const resumed = await within(
      driverRun(t, dir, out, STEPS, [...CKPT, "--resume", out], t.env, t.gpus[2]),
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

/**
 * The JetStream server that leads the object store's stream (`OBJ_actors_default`, found with
 * the JetStream API) is SIGKILLed mid-run. The bucket has 3 replicas on the three hosts' servers,
 * so the two left elect a new leader and the driver writes its checkpoints (steps 2 and 4) and
 * reads the run's state through them; the clients of the killed server fail over; the run ends on
 * the bits of the same run on one host.
 *
 * - As step 1's calls go out, after the workers loaded the weights from it.
 * - As the `load` calls go out, while the workers read the weights through it: a client that fails
 *   over sends its calls in flight again, and the worker must run its `load` once (the runtime
 *   answers a copy of a call with the first's answer: a second `load` after the driver's `init`
 *   would reset the worker, "init before load").
 */
import assert from "node:assert/strict";
import { jetstreamManager } from "@nats-io/jetstream";
import { connectNats } from "../runtime/connect.ts";
import { leftovers, newTag, sameFile, tapCalls, waitUntil, within } from "./support/faults.ts";
import { driverRun, oneHostRun, startTrainingLab } from "./support/multihost.ts";
import { writeTinySetup } from "./support/tiny_run.ts";

const STEPS = 6;
const STREAM = "OBJ_actors_default";

/** A run whose stream leader is killed as the first call of `method` (of step `step`) goes out. */
async function leaderRun(method: string, step?: number) {
  const dir = await Deno.makeTempDir({ prefix: "hd-multihost-leader-" });
  const tag = newTag();
  let t: Awaited<ReturnType<typeof startTrainingLab>> | undefined;
  try {
    await writeTinySetup(dir);
    const ref = await oneHostRun(dir, STEPS);
    t = await startTrainingLab(tag, 2);
    const lab = t;
    const nc = await connectNats(t.servers.map((s) => s.url), { user: t.user, pass: t.pass });
    const jsm = await jetstreamManager(nc);
    let killed: string | undefined;
    let kill: Promise<void> | undefined;
    const stopTap = tapCalls({ name: "default", nc }, (c) => {
      if (kill || c.method !== method) return;
      if (step !== undefined && (c.value as { step?: number }).step !== step) return;
      kill = (async () => {
        const leader = (await jsm.streams.info(STREAM)).cluster?.leader;
        const victim = lab.servers.find((_, i) => lab.lab.hosts[i].name === leader);
        assert.ok(victim, `the stream's leader ${leader} is one of the hosts' servers`);
        killed = leader;
        await victim.kill("SIGKILL");
      })();
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
      await kill;
    }
    assert.ok(killed, `the leader was killed at ${method}`);
    assert.equal(r.code, 0, `the finetune CLI failed:\n${r.stderr}`);
    const report = JSON.parse(await Deno.readTextFile(`${out}/report.json`));
    assert.deepEqual(report.weights_loaded_via, ["store", "store"]);
    assert.deepEqual(report.steps.map((s: { step: number }) => s.step), [0, 1, 2, 3, 4, 5]);
    assert.ok(
      await sameFile(`${ref}/model.safetensors`, `${out}/model.safetensors`),
      "the weights equal the one-host run's",
    );
    // The stream lives on, led by another server, one replica short.
    let info = await jsm.streams.info(STREAM);
    await waitUntil("the stream reports its new leader", async () => {
      info = await jsm.streams.info(STREAM);
      return info.cluster?.leader !== undefined;
    });
    assert.notEqual(info.cluster?.leader, killed);
    assert.ok(info.state.messages > 0, "the stream holds the run's objects");
    console.log(
      `  killed ${killed}, the stream's leader; now led by ${info.cluster?.leader}; ` +
        `rollbacks: ${report.recoveries}`,
    );
    await nc.close();
  } finally {
    await t?.stop();
    assert.deepEqual(await leftovers(tag), []);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("several hosts: the object store's stream leader is killed mid-run; the replicas carry the run to the same bits", async () => {
  await leaderRun("step", 1);
});

Deno.test("several hosts: the object store's stream leader is killed as the workers load; each loads once, same bits", async () => {
  await leaderRun("load");
});

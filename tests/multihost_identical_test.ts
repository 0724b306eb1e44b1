/**
 * A fine-tuning run across hosts (network namespaces: the driver's host and two GPU hosts, each
 * with its own nats-server in one cluster and its own hostname) ends on the bits of the same run
 * on one host. The workers are on other hosts than the model folder, so `--load-via auto` sends
 * them the weights through the object store, which the job created with 3 replicas.
 */
import assert from "node:assert/strict";
import { jetstreamManager } from "@nats-io/jetstream";
import { connectNats } from "../runtime/connect.ts";
import { leftovers, newTag, sameFile, within } from "./support/faults.ts";
import { driverRun, oneHostRun, startTrainingLab } from "./support/multihost.ts";
import { writeTinySetup } from "./support/tiny_run.ts";

const STEPS = 4;

Deno.test("several hosts: a run across namespaces ends on the one-host run's bits; weights through a 3-replica store", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-multihost-" });
  const tag = newTag();
  let t: Awaited<ReturnType<typeof startTrainingLab>> | undefined;
  try {
    await writeTinySetup(dir);
    const ref = await oneHostRun(dir, STEPS);
    t = await startTrainingLab(tag, 2);
    const out = `${dir}/hosts`;
    const r = await within(driverRun(t, dir, out, STEPS), 120_000, "the run across hosts");
    assert.equal(r.code, 0, `the finetune CLI failed:\n${r.stderr}`);
    const report = JSON.parse(await Deno.readTextFile(`${out}/report.json`));
    assert.deepEqual(report.weights_loaded_via, ["store", "store"]);
    assert.deepEqual(report.steps.map((s: { step: number }) => s.step), [0, 1, 2, 3]);
    assert.match(r.stderr, /object store actors_default: 3 replicas/);
    assert.ok(
      await sameFile(`${ref}/model.safetensors`, `${out}/model.safetensors`),
      "the weights equal the one-host run's",
    );

    // The bucket's stream really has 3 peers, on 3 of the hosts.
    const nc = await connectNats(t.servers.map((s) => s.url), { user: t.user, pass: t.pass });
    try {
      const info = await (await jetstreamManager(nc)).streams.info("OBJ_actors_default");
      assert.equal(info.config.num_replicas, 3);
      const peers = [info.cluster?.leader, ...(info.cluster?.replicas ?? []).map((p) => p.name)];
      assert.equal(new Set(peers).size, 3, `peers: ${peers.join(", ")}`);
    } finally {
      await nc.close();
    }
  } finally {
    await t?.stop();
    assert.deepEqual(await leftovers(tag), []);
    await Deno.remove(dir, { recursive: true });
  }
});

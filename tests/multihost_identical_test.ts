/**
 * A fine-tuning run across hosts (network namespaces: the driver's host and two GPU hosts, each
 * with its own nats-server in one cluster and its own hostname) ends on the bits of the same run
 * on one host. The workers are on other hosts than the model folder, so `--load-via auto` sends
 * them the weights through the object store, which the job created with 3 replicas.
 */
import assert from "node:assert/strict";
import { jetstreamManager } from "@nats-io/jetstream";
import { within } from "./support/faults.ts";
import { assertSameBits, driverRun, finishedReport, withScenario } from "./support/multihost.ts";

const STEPS = 4;

Deno.test("several hosts: a run across namespaces ends on the one-host run's bits; weights through a 3-replica store", async () => {
  await withScenario("hd-multihost-", { steps: STEPS, gpuHosts: 2 }, async (s) => {
    const { t } = s;
    const r = await within(driverRun(t, s.dir, s.out, STEPS), 120_000, "the run across hosts");
    const report = await finishedReport(s, r);
    assert.deepEqual(report.weights_loaded_via, ["store", "store"]);
    assert.match(r.stderr, /object store actors_default: 3 replicas/);
    await assertSameBits(s);

    // The bucket's stream really has 3 peers, on 3 of the hosts.
    const nc = await t.connect();
    try {
      const info = await (await jetstreamManager(nc)).streams.info("OBJ_actors_default");
      assert.equal(info.config.num_replicas, 3);
      const peers = [info.cluster?.leader, ...(info.cluster?.replicas ?? []).map((p) => p.name)];
      assert.equal(new Set(peers).size, 3, `peers: ${peers.join(", ")}`);
    } finally {
      await nc.close();
    }
  });
});

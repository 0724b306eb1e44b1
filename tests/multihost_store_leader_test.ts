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
import { waitUntil } from "./support/faults.ts";
import {
  assertSameBits,
  CKPT,
  finishedReport,
  runAtCall,
  withScenario,
} from "./support/multihost.ts";

const STEPS = 6;
const STREAM = "OBJ_actors_default";

/** A run whose stream leader is killed as the first call of `method` (of step `step`) goes out. */
async function leaderRun(method: string, step?: number) {
  await withScenario("hd-multihost-leader-", { steps: STEPS, gpuHosts: 2 }, async (s) => {
    const { t } = s;
    const nc = await t.connect();
    try {
      const jsm = await jetstreamManager(nc);
      let killed: string | undefined;
      const { r } = await runAtCall(s, CKPT, {
        method,
        step,
        act: async () => {
          const leader = (await jsm.streams.info(STREAM)).cluster?.leader;
          const victim = t.servers.find((_, i) => t.lab.hosts[i].name === leader);
          assert.ok(victim, `the stream's leader ${leader} is one of the hosts' servers`);
          killed = leader;
          await victim.kill("SIGKILL");
        },
      });
      assert.ok(killed, `the leader was killed at ${method}`);
      const report = await finishedReport(s, r);
      assert.deepEqual(report.weights_loaded_via, ["store", "store"]);
      await assertSameBits(s);
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
    } finally {
      await nc.close();
    }
  });
}

Deno.test("several hosts: the object store's stream leader is killed mid-run; the replicas carry the run to the same bits", async () => {
  await leaderRun("step", 1);
});

Deno.test("several hosts: the object store's stream leader is killed as the workers load; each loads once, same bits", async () => {
  await leaderRun("load");
});

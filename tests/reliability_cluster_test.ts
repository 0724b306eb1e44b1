/**
 * A 3-server NATS cluster on loopback ports (routes between them, clustered JetStream, user and
 * password required). The job joins it by URL (credentials in the URL), its workers run on
 * nodes started by hand, one of them connected to server V only. At step 3, as that worker's
 * step call goes by, V is frozen (SIGSTOP) and 300 ms later SIGKILLed, so that the messages it
 * holds for and from the worker are lost: the worker's connections fail over to the other
 * servers (learnt from the cluster), the calls in flight are sent again once its heartbeat says
 * it reconnected, and the run ends on the bits of an uninterrupted run. V is neither the JetStream meta leader nor the object store's server
 * (a single-replica bucket lives on one server; losing it is another fault than this one).
 */
import assert from "node:assert/strict";
import { runFinetune } from "../actors/job.ts";
import type { System } from "../runtime/mod.ts";
import { tinyOptions, writeTinySetup } from "./support/tiny_run.ts";
import {
  expendableServer,
  type HandNode,
  leftovers,
  newTag,
  sameFile,
  startCluster,
  startHandNode,
  tapCalls,
  type TestServer,
  within,
} from "./support/faults.ts";

const STEPS = 6;
const quiet = { log: () => {}, isTty: false, progress: () => {} };

Deno.test("3-server cluster: the server a worker is connected to is SIGKILLed mid-run; it fails over, same bits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-cluster-" });
  const tag = newTag();
  const servers: TestServer[] = [];
  const nodes: HandNode[] = [];
  try {
    await writeTinySetup(dir);
    const clean = tinyOptions(dir, { out: `${dir}/clean`, eval: null, maxSteps: STEPS });
    await runFinetune(clean, quiet);

    const user = "trainer";
    const pass = crypto.randomUUID();
    servers.push(
      ...await startCluster(tag, [`authorization { user: "${user}", password: "${pass}" }`]),
    );
    const victim = await expendableServer(servers, { user, pass });
    const others = servers.filter((s) => s !== victim);
    const env = { NATS_USER: user, NATS_PASSWORD: pass };
    nodes.push(startHandNode({ urls: victim.url, id: "hostA", tag, env }));
    nodes.push(startHandNode({ urls: others[0].url, id: "hostB", tag, env }));

    const withCreds = (url: string) => url.replace("nats://", `nats://${user}:${pass}@`);
    let frozen = false;
    let killedAt = 0;
    let reconnectedAt = 0;
    let stopTap = () => {};
    const o = tinyOptions(dir, {
      out: `${dir}/cluster`,
      eval: null,
      maxSteps: STEPS,
      checkpointEvery: 2,
      nats: others.map((s) => withCreds(s.url)).join(","),
    });
    const log: string[] = [];
    const [report] = await within(
      runFinetune(o, {
        ...quiet,
        log: (l) => log.push(l),
        progress: (t) => log.push(t),
        onSystem: (system: System) => {
          let spare = false;
          system.on((e) => {
            if (e.type === "node_reconnected" && e.node === "hostA" && killedAt && !reconnectedAt) {
              reconnectedAt = performance.now();
            }
            // A spare node, once the workers are placed: a worker that misses its heartbeats
            // while failing over can restart there.
            const up = system.actors().filter((a) => /-w\d$/.test(a.id) && a.state === "up");
            if (!spare && up.length === 2) {
              spare = true;
              nodes.push(startHandNode({ urls: others[1].url, id: "hostC", tag, env }));
            }
          });
          stopTap = tapCalls(system, (c) => {
            const v = c.value as { step?: number };
            if (frozen || c.method !== "step" || v.step !== 3) return;
            const a = system.actors().find((x) => x.id === c.actor);
            if (a?.node !== "hostA") return;
            frozen = true;
            // Frozen first, so that what it holds for or from the worker (the step call, the
            // contribution, the reply) is lost for sure when it dies.
            Deno.kill(victim.pid, "SIGSTOP");
            setTimeout(() => {
              killedAt = performance.now();
              victim.kill("SIGKILL");
            }, 300);
          });
        },
      }),
      180_000,
      "the run on the cluster",
    );
    stopTap();
    assert.ok(killedAt > 0, "the server was killed mid-run");
    assert.ok(reconnectedAt > 0, "the worker's node reconnected");
    console.log(
      `  killed server ${victim.url} (worker node hostA's only URL); hostA reconnected and said ` +
        `so after ${(reconnectedAt - killedAt).toFixed(0)} ms; rollbacks: ` +
        `${(report as { recoveries?: number }).recoveries}`,
    );
    console.log(
      log.filter((l) => /again|fail|generation/.test(l)).map((l) => `  | ${l}`).join("\n"),
    );
    assert.deepEqual(report.steps.map((s) => s.step), [0, 1, 2, 3, 4, 5]);
    assert.ok(
      await sameFile(`${clean.out}/model.safetensors`, `${o.out}/model.safetensors`),
      "the weights equal the uninterrupted run's",
    );
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await Promise.all(servers.map((s) => s.kill()));
    assert.deepEqual(await leftovers(tag), []);
    await Deno.remove(dir, { recursive: true });
  }
});

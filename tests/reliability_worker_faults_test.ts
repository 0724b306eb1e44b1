/**
 * Worker faults on real processes: a GpuWorker's node process is SIGKILLed, or SIGSTOPped past
 * the heartbeat timeout, in the middle of a step (right as its step call arrives). The run rolls
 * back to its last checkpoint with a new generation, the worker restarts on a fresh node on this
 * host, and the final weights are bit-identical to an uninterrupted run with the same seed.
 */
import assert from "node:assert/strict";
import { runFinetune } from "../actors/job.ts";
import { readReportJson } from "../train/report/report.ts";
import type { System } from "../runtime/mod.ts";
import { tinyOptions, writeTinySetup } from "./support/tiny_run.ts";
import { nodeOf, sameFile, tapCalls } from "./support/faults.ts";

const STEPS = 6;
const quiet = { log: () => {}, isTty: false, progress: () => {} };

async function reference(dir: string): Promise<string> {
  const o = tinyOptions(dir, {
    out: `${dir}/clean`,
    eval: null,
    maxSteps: STEPS,
    checkpointEvery: 2,
  });
  await runFinetune(o, quiet);
  return `${o.out}/model.safetensors`;
}

Deno.test("SIGKILL of a worker's node mid-step: detected, restarted on this host, rolled back, same bits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-wkill-" });
  try {
    await writeTinySetup(dir);
    const clean = await reference(dir);
    const log: string[] = [];
    let killedAt = 0;
    let detectedAt = 0;
    let victim = "";
    let stopTap = () => {};
    const o = tinyOptions(dir, {
      out: `${dir}/faulty`,
      eval: null,
      maxSteps: STEPS,
      checkpointEvery: 2,
    });
    const [report] = await runFinetune(o, {
      ...quiet,
      log: (l) => log.push(l),
      progress: (t) => log.push(t),
      onSystem: (system: System) => {
        system.on((e) => {
          if (e.type === "actor_down" && e.actor.id.endsWith("-w1") && killedAt && !detectedAt) {
            detectedAt = performance.now();
          }
        });
        stopTap = tapCalls(system, (c) => {
          const v = c.value as { step?: number; generation?: number };
          if (killedAt || c.method !== "step" || !c.actor.endsWith("-w1") || v.step !== 3) return;
          const node = nodeOf(system, c.actor);
          assert.ok(node, "worker 1 runs on a local node");
          victim = node.id;
          killedAt = performance.now();
          node.kill("SIGKILL");
        });
      },
    });
    stopTap();
    assert.ok(killedAt > 0, "the worker's node was killed");
    assert.ok(detectedAt > 0, "its death was noticed");
    console.log(
      `  worker node ${victim} SIGKILLed at step 3; death noticed after ${
        (detectedAt - killedAt).toFixed(1)
      } ms`,
    );
    console.log(
      log.filter((l) => /fail|generation|rolling/.test(l)).map((l) => `  | ${l}`).join("\n"),
    );
    assert.equal((report as { recoveries?: number }).recoveries, 1);
    assert.deepEqual(report.steps.map((s) => s.step), [0, 1, 2, 3, 4, 5]);
    const disk = await readReportJson(`${o.out}/report.json`);
    assert.equal((disk as { recoveries?: number }).recoveries, 1);
    assert.ok(
      await sameFile(clean, `${o.out}/model.safetensors`),
      "final weights equal the clean run's",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SIGSTOP of a worker's node past the heartbeat timeout: replaced, and fenced when it wakes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-wstop-" });
  let frozen = 0;
  try {
    await writeTinySetup(dir);
    const clean = await reference(dir);
    const log: string[] = [];
    let stoppedAt = 0;
    let detectedAt = 0;
    let wokeAt = 0;
    const stale: string[] = [];
    const stops: (() => void)[] = [];
    const o = tinyOptions(dir, {
      out: `${dir}/faulty`,
      eval: null,
      maxSteps: STEPS,
      checkpointEvery: 2,
    });
    const [report] = await runFinetune(o, {
      ...quiet,
      log: (l) => log.push(l),
      progress: (t) => log.push(t),
      onSystem: (system: System) => {
        // Whatever the woken worker still publishes for generation 0 is recorded here.
        const sub = system.nc.subscribe(`${system.namespace}.hd.>`, {
          callback: (err, msg) => {
            if (!err && wokeAt && /\.g0\./.test(msg.subject)) stale.push(msg.subject);
          },
        });
        stops.push(() => sub.unsubscribe());
        system.on((e) => {
          if (e.type === "actor_down" && e.actor.id.endsWith("-w1") && stoppedAt && !detectedAt) {
            detectedAt = performance.now();
          }
          // Wake the old process once the worker runs again elsewhere (a new incarnation).
          if (e.type === "actor_up" && e.actor.id.endsWith("-w1") && e.actor.inc > 0 && frozen) {
            Deno.kill(frozen, "SIGCONT");
            frozen = 0;
            wokeAt = performance.now();
          }
        });
        stops.push(tapCalls(system, (c) => {
          const v = c.value as { step?: number };
          if (stoppedAt || c.method !== "step" || !c.actor.endsWith("-w1") || v.step !== 3) return;
          const node = nodeOf(system, c.actor)!;
          frozen = node.pid;
          stoppedAt = performance.now();
          Deno.kill(node.pid, "SIGSTOP");
        }));
      },
    });
    stops.forEach((f) => f());
    assert.ok(stoppedAt > 0 && detectedAt > 0 && wokeAt > 0, "stopped, noticed, woken");
    console.log(
      `  frozen worker noticed after ${
        (detectedAt - stoppedAt).toFixed(0)
      } ms (heartbeat 500 ms, ` +
        `3 missed); woken ${(wokeAt - stoppedAt).toFixed(0)} ms after the stop; ` +
        `${stale.length} stale generation-0 messages seen on the wire after it woke`,
    );
    assert.equal((report as { recoveries?: number }).recoveries, 1);
    assert.deepEqual(report.steps.map((s) => s.step), [0, 1, 2, 3, 4, 5]);
    assert.ok(
      await sameFile(clean, `${o.out}/model.safetensors`),
      "final weights equal the clean run's",
    );
  } finally {
    if (frozen) Deno.kill(frozen, "SIGCONT");
    await Deno.remove(dir, { recursive: true });
  }
});

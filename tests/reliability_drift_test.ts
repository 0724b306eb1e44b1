/**
 * Drift between workers in the state that must be the same everywhere besides W: a LoRA
 * adapter, a LoRA optimizer moment, one of HD-PiSSA's fixed pairs. One float of one tensor is
 * changed on worker 1 right after it applies step 1 (`debugPerturb`, allowed only in processes
 * started with HD_FAULT_INJECTION=1); the checksum after step 1 must see it. Under exact sync
 * the run stops with an error naming the worker and the tensor; under tolerant sync worker 1
 * takes worker 0's whole shared state, and the run ends on the bits of a clean run.
 */
import assert from "node:assert/strict";
import { runFinetune } from "../actors/job.ts";
import { TrainingError } from "../actors/driver.ts";
import { FAULT_INJECTION_ENV, GpuWorker, StepProtocolError } from "../actors/gpu_worker.ts";
import { init, type System } from "../runtime/mod.ts";
import { readReportJson } from "../train/report/report.ts";
import { getMethod } from "../train/methods/registry.ts";
import type { FinetuneOptions } from "../train/cli/options.ts";
import { tinyOptions, writeTinySetup } from "./support/tiny_run.ts";
import { sameFile, tapCalls } from "./support/faults.ts";

const quiet = { log: () => {}, isTty: false, progress: () => {} };

interface Perturbation {
  tensor: string;
  index: number;
  ulps: number;
}

/**
 * Runs the job with `p` armed on worker 1 for right after its apply of step 1 (armed as soon as
 * the worker's init call is seen, so before any step). Returns the run's log and its error.
 */
async function runPerturbed(
  o: FinetuneOptions,
  p: Perturbation,
): Promise<{ log: string[]; error: unknown; armed: boolean }> {
  const log: string[] = [];
  const seen: { arming?: Promise<{ armed: boolean }> } = {};
  let stopTap = () => {};
  let error: unknown = null;
  try {
    await runFinetune(o, {
      ...quiet,
      log: (l) => log.push(l),
      progress: (l) => log.push(l),
      onSystem: (system: System) => {
        stopTap = tapCalls(system, (c) => {
          if (seen.arming || c.method !== "init" || !c.actor.endsWith("-w1")) return;
          seen.arming = system.getActor(GpuWorker, c.actor).then((w) =>
            w.debugPerturb({ ...p, afterStep: 1 })
          );
        });
      },
    });
  } catch (e) {
    error = e;
  } finally {
    stopTap();
  }
  assert.ok(seen.arming, "worker 1's init was seen");
  const armed = (await seen.arming).armed;
  return { log, error, armed };
}

Deno.test("each method declares its shared state: pairs for HD-PiSSA, adapter and optimizer for LoRA/PiSSA, optimizer for full", () => {
  assert.deepEqual(getMethod("hd-pissa").shared, { adapters: true, optimizer: false });
  assert.deepEqual(getMethod("lora").shared, { adapters: true, optimizer: true });
  assert.deepEqual(getMethod("pissa").shared, { adapters: true, optimizer: true });
  assert.deepEqual(getMethod("full").shared, { adapters: false, optimizer: true });
});

Deno.test("debugPerturb is refused by a worker started without HD_FAULT_INJECTION=1", async () => {
  assert.equal(Deno.env.get(FAULT_INJECTION_ENV), undefined);
  const system = await init({ nodes: 1 });
  try {
    const w = await system.spawn(GpuWorker, { worker: 0 });
    const e = await w.debugPerturb({ tensor: "model.norm.weight", index: 0 }).catch((e) => e);
    assert.ok(e instanceof StepProtocolError, String(e));
    assert.match(e.message, /fault injection for tests; worker 0 was not started with/);
  } finally {
    await system.shutdown();
  }
});

for (
  const c of [
    {
      method: "lora",
      exact: { tensor: "model.layers.0.self_attn.q_proj.weight.B0", index: 0, ulps: 1 },
      // A moment: the optimizer state of data-parallel workers must agree as well.
      tolerant: { tensor: "model.layers.1.mlp.up_proj.weight.B.v", index: 3, ulps: 8 },
    },
    {
      method: "hd-pissa",
      // Worker 0's fixed pair, as worker 1 holds it to apply worker 0's steps.
      exact: { tensor: "model.layers.1.mlp.down_proj.weight.A0", index: 5, ulps: 1 },
      tolerant: { tensor: "model.layers.0.self_attn.v_proj.weight.B0", index: 2, ulps: 8 },
    },
  ] as const
) {
  Deno.test(`${c.method}: drift on one worker stops exact sync naming it, and tolerant sync repairs it to the clean run's bits`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "hd-drift-" });
    Deno.env.set(FAULT_INJECTION_ENV, "1");
    try {
      await writeTinySetup(dir);
      const base = { method: c.method, eval: null, checksumEvery: 2 } as const;
      const clean = tinyOptions(dir, { ...base, out: `${dir}/clean`, sync: "exact" });
      await runFinetune(clean, quiet);

      const exact = tinyOptions(dir, { ...base, out: `${dir}/exact`, sync: "exact" });
      const stopped = await runPerturbed(exact, c.exact);
      assert.ok(stopped.armed, "armed for after step 1");
      const e = stopped.error as Error;
      assert.ok(e instanceof TrainingError, `a TrainingError, not ${e}`);
      const tensor = c.exact.tensor.replaceAll(".", "\\.");
      assert.match(
        e.message,
        new RegExp(
          `state differs after step 1: worker 1 differs from worker 0 in ${tensor}: ` +
            `worker 0 has [0-9a-f]{12}…, worker 1 has [0-9a-f]{12}…`,
        ),
      );
      console.log(`  exact: ${e.message}`);

      const tolerant = tinyOptions(dir, { ...base, out: `${dir}/tolerant`, sync: "tolerant" });
      const repaired = await runPerturbed(tolerant, c.tolerant);
      assert.equal(repaired.error, null, String(repaired.error));
      const report = await readReportJson(`${tolerant.out}/report.json`);
      assert.deepEqual(
        report.sync_drift?.map((d) => [d.step, d.worker, d.tensor]),
        [[1, 1, c.tolerant.tensor]],
      );
      const drift = report.sync_drift![0].relative;
      assert.ok(drift > 0 && drift <= 1e-6, `relative drift ${drift}`);
      assert.equal((report as { resyncs?: number }).resyncs, 2);
      assert.equal(report.nonfinite_loss_count, 0);
      assert.match(
        repaired.log.join("\n"),
        new RegExp(
          `step 1: worker 1's ${c.tolerant.tensor.replaceAll(".", "\\.")} drifted ` +
            `[0-9.e-]+ \\(relative\\) from worker 0's; re-synchronising from worker 0`,
        ),
      );
      assert.ok(
        await sameFile(`${clean.out}/model.safetensors`, `${tolerant.out}/model.safetensors`),
        "after the re-sync the run ends on the clean run's bits",
      );
    } finally {
      Deno.env.delete(FAULT_INJECTION_ENV);
      await Deno.remove(dir, { recursive: true });
    }
  });
}

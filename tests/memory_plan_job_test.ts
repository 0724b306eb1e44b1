// The finetune job checks its memory plan before anything starts: an impossible run stops with
// MemoryPlanError before the output folder exists; a run that fits keeps the plan in report.json.
import assert from "node:assert/strict";
import { runFinetune } from "../actors/job.ts";
import { MemoryPlanError } from "../train/plan/memory.ts";
import { tinyOptions, writeTinySetup } from "./support/tiny_run.ts";

Deno.test("the job refuses a run over the device's limits before creating --out", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeTinySetup(dir);
    const lines: string[] = [];
    const o = tinyOptions(dir, { microBatch: 4, batchSize: 8, seqLen: 64 });
    await assert.rejects(
      () =>
        runFinetune(o, {
          log: (l) => lines.push(l),
          limits: { maxBufferSize: 4096 },
        }),
      (e: unknown) => e instanceof MemoryPlanError && /--micro-batch/.test(e.message),
    );
    await assert.rejects(() => Deno.stat(o.out), Deno.errors.NotFound);
    await assert.rejects(
      () => runFinetune(tinyOptions(dir), { log: () => {}, limits: { hostMemory: 1000 } }),
      (e: unknown) => e instanceof MemoryPlanError && /host/.test(e.message),
    );
    await assert.rejects(() => Deno.stat(o.out), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report.json of a short run has the memory plan the job printed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeTinySetup(dir);
    const lines: string[] = [];
    const o = tinyOptions(dir, { maxSteps: 1, eval: null });
    await runFinetune(o, { log: (l) => lines.push(l) });
    assert.ok(lines.some((l) => l.startsWith("memory plan (")), lines.join("\n"));
    const report = JSON.parse(await Deno.readTextFile(`${o.out}/report.json`));
    const p = report.memory_plan;
    assert.equal(p.workers, 2);
    assert.equal(p.micro_batch, 2);
    assert.ok(p.worker.total > p.worker.weights && p.worker.weights > 0);
    assert.ok(p.host.weights > 0 && p.host.svd > 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

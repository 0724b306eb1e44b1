/**
 * Keeping W the same on every worker: exact sync on identical devices, tolerant sync (within
 * 1e-6 relative, re-synchronised from worker 0) for mixed devices.
 */
import assert from "node:assert/strict";
import { runFinetune } from "../actors/job.ts";
import { maxRelativeDifference } from "../train/checkpoint/checksum.ts";
import type { HostTensor } from "../model/safetensors.ts";
import { Rng } from "../core/rng.ts";
import { tinyOptions, writeTinySetup } from "./support/tiny_run.ts";

const quiet = { log: () => {}, isTty: false, progress: () => {} };

Deno.test("maxRelativeDifference finds the tensor that drifted most", () => {
  const rng = new Rng(5);
  const a = new Map<string, HostTensor>();
  for (const [name, n] of [["x", 300], ["y", 50]] as const) {
    a.set(name, { shape: [n], data: rng.normals(n) });
  }
  const b = new Map([...a].map(([k, t]) => [k, { shape: t.shape, data: t.data.slice() }]));
  assert.deepEqual(maxRelativeDifference(a, b), { name: "x", value: 0 });
  // Perturb y by a known relative amount: ‖δ‖/‖y‖ = 1e-7·(norm of a unit direction) scaled.
  const y = b.get("y")!.data;
  const yn = Math.hypot(...y);
  const dir = rng.normals(y.length);
  const dn = Math.hypot(...dir);
  const want = 3e-6;
  const perturbed = y.map((v, i) => v + want * yn * dir[i] / dn);
  const c = new Map(b);
  c.set("y", { shape: [50], data: perturbed });
  const d = maxRelativeDifference(c, a);
  assert.equal(d.name, "y");
  assert.ok(Math.abs(d.value - want) < 0.05 * want, `${d.value}`);
  c.delete("x");
  assert.deepEqual(maxRelativeDifference(c, a), { name: "x", value: Infinity });
});

Deno.test("tolerant sync re-synchronises W from worker 0 at every checksum and changes no bit", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-sync-" });
  try {
    await writeTinySetup(dir);
    for (const method of ["hd-pissa", "lora"] as const) {
      const exact = tinyOptions(dir, {
        method,
        out: `${dir}/${method}-exact`,
        eval: null,
        sync: "exact",
      });
      const tolerant = tinyOptions(dir, {
        method,
        out: `${dir}/${method}-tolerant`,
        eval: null,
        sync: "tolerant",
        checksumEvery: 2,
      });
      const [re] = await runFinetune(exact, quiet);
      const [rt] = await runFinetune(tolerant, quiet);
      const extra = (r: unknown) => r as { resyncs: number; sync: string };
      assert.equal(extra(re).resyncs, 0);
      assert.equal(extra(re).sync, "exact");
      // Steps 0..3 with a checksum after steps 1 and 3.
      assert.equal(extra(rt).resyncs, 2);
      assert.equal(extra(rt).sync, "tolerant");
      const [x, y] = await Promise.all([
        Deno.readFile(`${exact.out}/model.safetensors`),
        Deno.readFile(`${tolerant.out}/model.safetensors`),
      ]);
      assert.ok(x.length === y.length && x.every((v, i) => v === y[i]), `${method}: bits differ`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

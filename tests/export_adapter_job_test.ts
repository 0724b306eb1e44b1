/**
 * `--export-adapter` on a real fine-tuning run (a private nats-server, K = 2 worker processes, a
 * tiny random model): the run's model as a PEFT adapter of the base, whose figures join the run's
 * report.json and report.html, and which reproduces the run's weights within the error reported.
 */
import assert from "node:assert/strict";
import { runFinetune } from "../actors/job.ts";
import { adaptableLinears } from "../model/config.ts";
import { readSafetensors } from "../model/safetensors.ts";
import { readReportJson } from "../train/report/report.ts";
import { AdapterOutputError } from "../train/export/errors.ts";
import { TINY_CONFIG, tinyOptions, writeTinySetup } from "./support/tiny_run.ts";
import { appliedError, readAdapter } from "./support/peft_adapter.ts";

const quiet = { log: () => {}, isTty: false, progress: () => {} };

Deno.test("hd-pissa run with --export-adapter: a rank-2Kr adapter, its figures in report.json", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peft-job-" });
  try {
    await writeTinySetup(dir);
    const lines: string[] = [];
    const o = tinyOptions(dir, { eval: null, exportAdapter: `${dir}/adapter` });
    const [report] = await runFinetune(o, { ...quiet, log: (l) => lines.push(l) });

    const fromDisk = await readReportJson(`${o.out}/report.json`);
    const e = fromDisk.adapter_export!;
    assert.deepEqual(report.adapter_export, e);
    assert.equal(e.folder, `${dir}/adapter`);
    assert.equal(e.rank, 8); // 2Kr with K = 2, r = 2
    assert.equal(e.rank_source, "2Kr = 8");
    assert.equal(fromDisk.config.export_adapter, `${dir}/adapter`);
    assert.ok(lines.some((l) => /energy of ΔW kept/.test(l)), lines.join("\n"));
    assert.match(await Deno.readTextFile(`${o.out}/report.html`), /id="adapter"/);

    // The adapter applied to the base reproduces the run's weights within the reported error.
    const a = await readAdapter(`${dir}/adapter`);
    assert.equal(a.config.r, 8);
    assert.deepEqual(a.config.rank_pattern, {});
    const base = (await readSafetensors(`${o.model}/model.safetensors`)).tensors;
    const tuned = (await readSafetensors(`${o.out}/model.safetensors`)).tensors;
    const linears = adaptableLinears(TINY_CONFIG);
    assert.deepEqual(Object.keys(e.matrices), linears.map((l) => l.name));
    for (const l of linears) {
      const m = e.matrices[l.name];
      const got = appliedError(a, l, base.get(l.name)!, tuned.get(l.name)!);
      assert.equal(got.rank, 8);
      assert.ok(Math.abs(got.rel - m.rel_error) <= 1e-6 * m.rel_error + 1e-9, `${l.name}`);
      // Rank 2Kr holds all but the second-order terms of a few small steps.
      assert.ok(m.energy_kept > 0.99, `${l.name}: energy ${m.energy_kept}`);
      assert.ok(m.rel_error < 0.1, `${l.name}: error ${m.rel_error}`);
    }
    assert.ok(e.energy_kept > 0.99 && e.rel_error < 0.1, JSON.stringify(e.energy_kept));
    assert.deepEqual(e.not_in_adapter, []);

    // The folder is taken now: a second run into it is refused before it starts.
    await assert.rejects(
      runFinetune({ ...o, out: `${dir}/run2` }, quiet),
      (err: unknown) => err instanceof AdapterOutputError && /--export-adapter/.test(err.message),
    );
    await assert.rejects(Deno.stat(`${dir}/run2`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--compare with --export-adapter: one adapter per method under DIR/<method>", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peft-cmp-" });
  try {
    await writeTinySetup(dir);
    const o = tinyOptions(dir, {
      eval: null,
      compare: true,
      maxSteps: 2,
      exportAdapter: `${dir}/adapters`,
    });
    const reports = await runFinetune(o, quiet);
    assert.deepEqual(reports.map((r) => r.method), ["hd-pissa", "pissa", "lora", "full"]);
    const want: Record<string, [number, string]> = {
      "hd-pissa": [8, "2Kr = 8"],
      pissa: [4, "2r = 4"],
      lora: [2, "r = 2"],
      full: [2, "--rank"], // no bound: the run's --rank
    };
    for (const r of reports) {
      const e = (await readReportJson(`${o.out}/${r.method}/report.json`)).adapter_export!;
      assert.equal(e.folder, `${dir}/adapters/${r.method}`);
      assert.deepEqual([e.rank, e.rank_source], want[r.method]);
      assert.equal((await readAdapter(e.folder)).config.r, e.rank);
      // PiSSA's and LoRA's ΔW have rank at most 2r and r: their adapters are exact up to f32.
      if (r.method === "pissa" || r.method === "lora") assert.ok(e.rel_error < 1e-5, r.method);
      // Full fine-tuning also trains the norms, which no LoRA adapter carries.
      assert.equal(e.not_in_adapter!.length > 0, r.method === "full", r.method);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * A fine-tuned model as a PEFT LoRA adapter (train/export/): the adapter read back from its files
 * and applied as PEFT applies it, `W_base + (lora_alpha / r)·B·A`, reproduces the tuned weights
 * within the error it reports; the names, shapes and config keys are PEFT's; bad input is refused
 * with a typed error before anything is written; and the CLI runs end to end.
 */
import assert from "node:assert/strict";
import { adaptableLinears } from "../model/config.ts";
import { f32BitsToBf16 } from "../model/half_float.ts";
import {
  type HostTensor,
  readSafetensors,
  saveModelFolder,
  writeSafetensors,
} from "../model/safetensors.ts";
import { initWeights } from "../train/pretrain/pretrain.ts";
import { Rng } from "../core/rng.ts";
import { exportAdapter, planRanks } from "../train/export/export.ts";
import {
  AdapterMissingTensorError,
  AdapterModelMismatchError,
  AdapterOutputError,
  AdapterRankError,
} from "../train/export/errors.ts";
import { TINY_CONFIG } from "./support/tiny_run.ts";
import { appliedError, readAdapter } from "./support/peft_adapter.ts";

/** A base model and a tuned one whose every linear moved by a rank-`k` ΔW of the same size. */
async function writePair(dir: string, k: number, seed = 3): Promise<void> {
  const base = initWeights(TINY_CONFIG, new Rng(seed), 0.08);
  const tuned = new Map<string, HostTensor>();
  const rng = new Rng(seed + 100);
  for (const [name, t] of base) tuned.set(name, { shape: t.shape, data: t.data.slice() });
  for (const l of adaptableLinears(TINY_CONFIG)) {
    const w = tuned.get(l.name)!.data;
    for (let c = 0; c < k; c++) {
      const u = rng.normals(l.out, 0.1 / (c + 1)), v = rng.normals(l.in, 0.1);
      for (let i = 0; i < l.out; i++) for (let j = 0; j < l.in; j++) w[i * l.in + j] += u[i] * v[j];
    }
  }
  // Full fine-tuning also trains the norms: one changed tensor that no adapter carries.
  tuned.get("model.norm.weight")!.data[0] += 0.5;
  await saveModelFolder(`${dir}/base`, TINY_CONFIG, base);
  await saveModelFolder(`${dir}/tuned`, TINY_CONFIG, tuned);
}

async function weightsOf(dir: string): Promise<Map<string, HostTensor>> {
  return (await readSafetensors(`${dir}/model.safetensors`)).tensors;
}

Deno.test("a ΔW of rank 3 comes back exactly from a rank-3 adapter, applied as PEFT applies it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peft-exact-" });
  try {
    await writePair(dir, 3);
    const e = await exportAdapter({
      base: `${dir}/base`,
      tuned: `${dir}/tuned`,
      out: `${dir}/adapter`,
      rank: 3,
    });
    const a = await readAdapter(`${dir}/adapter`);
    const [base, tuned] = [await weightsOf(`${dir}/base`), await weightsOf(`${dir}/tuned`)];
    for (const l of adaptableLinears(TINY_CONFIG)) {
      const m = e.matrices[l.name];
      const got = appliedError(a, l, base.get(l.name)!, tuned.get(l.name)!);
      assert.equal(got.rank, 3);
      // Only f32 rounding (of W_final and of the factors) stands between them.
      assert.ok(got.rel < 2e-6, `${l.name}: applied error ${got.rel}`);
      assert.ok(Math.abs(got.rel - m.rel_error) < 1e-9, `${l.name}: ${got.rel} vs ${m.rel_error}`);
      assert.ok(m.energy_kept > 1 - 1e-10, `${l.name}: energy ${m.energy_kept}`);
      assert.equal(m.svd, "exact");
    }
    assert.ok(e.rel_error < 2e-6 && e.energy_kept > 1 - 1e-10);
    assert.deepEqual(e.not_in_adapter.map((t) => t.tensor), ["model.norm.weight"]);
    assert.deepEqual(a.report.rel_error, e.rel_error);

    // Rank 2 of a rank-3 ΔW: the third component is lost, and the reported error says how much.
    const e2 = await exportAdapter({
      base: `${dir}/base`,
      tuned: `${dir}/tuned`,
      out: `${dir}/adapter2`,
      rank: 2,
    });
    const a2 = await readAdapter(`${dir}/adapter2`);
    for (const l of adaptableLinears(TINY_CONFIG)) {
      const m = e2.matrices[l.name];
      const got = appliedError(a2, l, base.get(l.name)!, tuned.get(l.name)!);
      assert.ok(m.rel_error > 1e-2, `${l.name}: ${m.rel_error}`);
      assert.ok(Math.abs(got.rel - m.rel_error) < 1e-6 * m.rel_error, `${l.name}`);
      // An exact SVD: error² + energy kept = 1.
      assert.ok(Math.abs(m.rel_error ** 2 + m.energy_kept - 1) < 1e-6, `${l.name}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("PEFT's names, shapes and adapter_config.json for a 2-layer model", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peft-names-" });
  try {
    await writePair(dir, 2);
    await exportAdapter({
      base: `${dir}/base`,
      tuned: `${dir}/tuned`,
      out: `${dir}/adapter`,
      rank: 4,
    });
    const a = await readAdapter(`${dir}/adapter`);
    const names: string[] = [];
    for (const layer of [0, 1]) {
      for (
        const m of ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
      ) {
        names.push(`base_model.model.model.layers.${layer}.${m}.lora_A.weight`);
        names.push(`base_model.model.model.layers.${layer}.${m}.lora_B.weight`);
      }
      for (const m of ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]) {
        names.push(`base_model.model.model.layers.${layer}.${m}.lora_A.weight`);
        names.push(`base_model.model.model.layers.${layer}.${m}.lora_B.weight`);
      }
    }
    assert.deepEqual([...a.tensors.keys()].sort(), names.sort());
    // hidden 32, 2 KV heads of 8, intermediate 48.
    const shapes: Record<string, [number, number]> = {
      q_proj: [32, 32],
      k_proj: [16, 32],
      v_proj: [16, 32],
      o_proj: [32, 32],
      gate_proj: [48, 32],
      up_proj: [48, 32],
      down_proj: [32, 48],
    };
    for (const [name, t] of a.tensors) {
      const [out, inn] = shapes[name.match(/\.(\w+_proj)\./)![1]];
      assert.deepEqual(t.shape, name.includes("lora_A") ? [4, inn] : [out, 4], name);
    }
    const bytes = await Deno.readFile(`${dir}/adapter/adapter_model.safetensors`);
    const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
    assert.deepEqual(header.__metadata__, { format: "pt" });
    assert.equal(header[names[0]].dtype, "F32");
    assert.deepEqual(a.config, {
      peft_type: "LORA",
      task_type: "CAUSAL_LM",
      base_model_name_or_path: `${dir}/base`,
      r: 4,
      lora_alpha: 4,
      target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
      lora_dropout: 0,
      bias: "none",
      fan_in_fan_out: false,
      rank_pattern: {},
      alpha_pattern: {},
      modules_to_save: null,
      inference_mode: true,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the method's rank bound, capped per matrix, goes into rank_pattern and alpha_pattern", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peft-cap-" });
  try {
    await writePair(dir, 20);
    // A run's report.json gives the method and its settings: 2Kr = 2·4·4 = 32 > 16 for k and v.
    await Deno.writeTextFile(
      `${dir}/tuned/report.json`,
      JSON.stringify({
        method: "hd-pissa",
        config: { seed: 0, rank: 4, workers: 4, targets: ["q_proj", "k_proj", "v_proj"] },
        steps: [],
        eval: { before: null, after: null },
        effective_rank: {},
        timing: { total_ms: 0, compute_ms: 0, comm_ms: 0, update_ms: 0 },
      }),
    );
    const e = await exportAdapter({
      base: `${dir}/base`,
      tuned: `${dir}/tuned`,
      out: `${dir}/adapter`,
    });
    assert.equal(e.rank, 32);
    assert.equal(e.rank_source, "2Kr = 32");
    const a = await readAdapter(`${dir}/adapter`);
    assert.equal(a.config.r, 32);
    assert.equal(a.config.lora_alpha, 32);
    assert.deepEqual(a.config.target_modules, ["q_proj", "k_proj", "v_proj"]);
    const capped = {
      "layers.0.self_attn.k_proj": 16,
      "layers.0.self_attn.v_proj": 16,
      "layers.1.self_attn.k_proj": 16,
      "layers.1.self_attn.v_proj": 16,
    };
    assert.deepEqual(a.config.rank_pattern, capped);
    assert.deepEqual(a.config.alpha_pattern, capped);
    assert.equal(a.tensors.size, 2 * 3 * 2);
    const [base, tuned] = [await weightsOf(`${dir}/base`), await weightsOf(`${dir}/tuned`)];
    const linears = adaptableLinears(TINY_CONFIG, ["q_proj", "k_proj", "v_proj"]);
    for (const l of linears) {
      const got = appliedError(a, l, base.get(l.name)!, tuned.get(l.name)!);
      assert.equal(got.rank, Math.min(32, l.out, l.in));
      // Full rank for every matrix here: exact up to f32.
      assert.ok(got.rel < 2e-6, `${l.name}: ${got.rel}`);
    }
    // Not adapted: the other four kinds and the norm.
    assert.equal(e.not_in_adapter.length, 2 * 4 + 1);

    const plan = (method: string, fallback: number | null = null) =>
      planRanks(adaptableLinears(TINY_CONFIG), {
        method,
        settings: { rank: 4, workers: 2 },
        fallback,
      });
    const ranksOf = (p: ReturnType<typeof plan>) => [...p.ranks.values()];
    assert.deepEqual(ranksOf(plan("hd-pissa")).slice(0, 7), [16, 16, 16, 16, 16, 16, 16]);
    assert.deepEqual(ranksOf(plan("pissa")).slice(0, 7), [8, 8, 8, 8, 8, 8, 8]);
    assert.deepEqual(ranksOf(plan("lora")).slice(0, 7), [4, 4, 4, 4, 4, 4, 4]);
    assert.throws(() => plan("full"), AdapterRankError);
    assert.deepEqual(ranksOf(plan("full", 20)).slice(0, 7), [20, 16, 16, 20, 20, 20, 20]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bad input: other architecture, missing tensor, rank too large, no rank, non-empty --out", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peft-bad-" });
  try {
    await writePair(dir, 2);
    const ok = { base: `${dir}/base`, tuned: `${dir}/tuned`, rank: 2 };

    const other = { ...TINY_CONFIG, intermediate_size: 40 };
    await saveModelFolder(`${dir}/other`, other, initWeights(other, new Rng(1), 0.08));
    await assert.rejects(
      exportAdapter({ ...ok, tuned: `${dir}/other`, out: `${dir}/a1` }),
      (e: unknown) =>
        e instanceof AdapterModelMismatchError && e.field === "intermediate_size" &&
        /intermediate_size/.test(e.message),
    );

    const cut = await weightsOf(`${dir}/tuned`);
    cut.delete("model.layers.1.mlp.up_proj.weight");
    await Deno.mkdir(`${dir}/cut`);
    await Deno.copyFile(`${dir}/tuned/config.json`, `${dir}/cut/config.json`);
    await writeSafetensors(`${dir}/cut/model.safetensors`, cut);
    await assert.rejects(
      exportAdapter({ ...ok, tuned: `${dir}/cut`, out: `${dir}/a2` }),
      (e: unknown) =>
        e instanceof AdapterMissingTensorError &&
        e.tensor === "model.layers.1.mlp.up_proj.weight" && e.folder === `${dir}/cut`,
    );

    await assert.rejects(
      exportAdapter({ ...ok, rank: 17, out: `${dir}/a3` }),
      (e: unknown) => e instanceof AdapterRankError && /k_proj\.weight \[16, 32\]/.test(e.message),
    );
    // No report.json and no --rank: nothing to take the rank from.
    await assert.rejects(
      exportAdapter({ ...ok, rank: null, out: `${dir}/a4` }),
      (e: unknown) => e instanceof AdapterRankError && /--rank/.test(e.message),
    );
    for (const d of ["a1", "a2", "a3", "a4"]) {
      await assert.rejects(Deno.stat(`${dir}/${d}`), Deno.errors.NotFound);
    }

    await Deno.mkdir(`${dir}/busy`);
    await Deno.writeTextFile(`${dir}/busy/notes.txt`, "mine");
    await assert.rejects(
      exportAdapter({ ...ok, out: `${dir}/busy` }),
      (e: unknown) => e instanceof AdapterOutputError && /--overwrite/.test(e.message),
    );
    // --overwrite replaces the adapter files and leaves the rest.
    await exportAdapter({ ...ok, out: `${dir}/busy`, overwrite: true });
    await exportAdapter({ ...ok, rank: 3, out: `${dir}/busy`, overwrite: true });
    assert.equal(await Deno.readTextFile(`${dir}/busy/notes.txt`), "mine");
    assert.equal((await readAdapter(`${dir}/busy`)).config.r, 3);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno run examples/export_adapter.ts: an adapter and its summary; a bad --out exits 1", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peft-cli-" });
  const cli = new URL("../examples/export_adapter.ts", import.meta.url).pathname;
  const run = async (...args: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", cli, ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = (b: Uint8Array) => new TextDecoder().decode(b);
    return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
  };
  try {
    await writePair(dir, 3);
    const args = ["--base", `${dir}/base`, "--tuned", `${dir}/tuned`, "--out", `${dir}/adapter`];
    const ok = await run(...args, "--rank", "3");
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /rank 3 \(--rank\), 14 matrices/);
    assert.match(ok.stdout, /energy of ΔW kept 100\.00(00)? %/);
    assert.match(ok.stdout, /not in the adapter: 1 other tensor/);
    const a = await readAdapter(`${dir}/adapter`);
    assert.equal(a.config.r, 3);
    assert.equal(a.tensors.size, 28);

    const again = await run(...args, "--rank", "3");
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^error: --out .*adapter is not empty; pass --overwrite/);
    const big = await run(...args, "--rank", "40", "--overwrite");
    assert.equal(big.code, 1);
    assert.match(
      big.stderr,
      /^error: --rank 40 is larger than model\.layers\.0\.self_attn\.q_proj/,
    );
    const flag = await run(...args, "--rank", "0");
    assert.equal(flag.code, 2);

    // --save-dtype bfloat16: the same factors, rounded to nearest even.
    const bf = await run(...args, "--rank", "3", "--save-dtype", "bfloat16", "--out", `${dir}/bf`);
    assert.equal(bf.code, 0, bf.stderr);
    const bfFile = await readSafetensors(`${dir}/bf/adapter_model.safetensors`);
    for (const [name, t] of a.tensors) {
      assert.equal(bfFile.dtypes.get(name), "BF16");
      const want = Float32Array.from(t.data, (v) => {
        const bits = new Uint32Array(new Float32Array([v]).buffer)[0];
        return new Float32Array(new Uint32Array([f32BitsToBf16(bits) << 16]).buffer)[0];
      });
      assert.deepEqual(bfFile.tensors.get(name)!.data, want, name);
    }

    // A run's folder: the base, the method and its settings come from its report.json.
    await Deno.writeTextFile(
      `${dir}/tuned/report.json`,
      JSON.stringify({
        method: "lora",
        config: { seed: 0, rank: 3, workers: 2, model: `${dir}/base` },
        steps: [],
        eval: { before: null, after: null },
        effective_rank: {},
        timing: { total_ms: 0, compute_ms: 0, comm_ms: 0, update_ms: 0 },
      }),
    );
    const fromRun = await run("--tuned", `${dir}/tuned`, "--out", `${dir}/from-run`);
    assert.equal(fromRun.code, 0, fromRun.stderr);
    assert.match(fromRun.stdout, /rank 3 \(r = 3\), 14 matrices/);
    const b = await readAdapter(`${dir}/from-run`);
    assert.equal(b.config.base_model_name_or_path, `${dir}/base`);
    assert.ok(b.report.rel_error < 2e-6);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

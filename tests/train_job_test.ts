/**
 * The fine-tuning job end to end on real processes: a private nats-server, K = 2 worker node
 * processes on lavapipe, the Driver in this process, a tiny random model.
 */
import assert from "node:assert/strict";
import { runFinetune } from "../actors/job.ts";
import { loadModelFolder } from "../model/safetensors.ts";
import { readReportJson } from "../train/report/report.ts";
import { adaptableLinears, expectedTensors } from "../model/config.ts";
import { f32BitsToBf16 } from "../model/half_float.ts";
import { initWeights } from "../train/pretrain/pretrain.ts";
import { Rng } from "../core/rng.ts";
import { init } from "../runtime/mod.ts";
import { GpuWorker } from "../actors/gpu_worker.ts";
import { WeightDigestError, weightFileDigests } from "../model/folder_digest.ts";
import { workerSettings } from "../train/cli/options.ts";
import { TINY_CONFIG, tinyOptions, writeShardedModel, writeTinySetup } from "./support/tiny_run.ts";

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

const quiet = { log: () => {}, isTty: false, progress: () => {} };

async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

/** A run that stopped after its checkpoints: a folder `to` holding only `from`'s checkpoints. */
async function copyCheckpoints(from: string, to: string): Promise<void> {
  for await (const e of Deno.readDir(`${from}/checkpoints`)) {
    await Deno.mkdir(`${to}/checkpoints/${e.name}`, { recursive: true });
    for await (const f of Deno.readDir(`${from}/checkpoints/${e.name}`)) {
      await Deno.copyFile(
        `${from}/checkpoints/${e.name}/${f.name}`,
        `${to}/checkpoints/${e.name}/${f.name}`,
      );
    }
  }
}

Deno.test("hd-pissa job: model folder, report, bytes per step, identical W on every worker", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-job-" });
  try {
    await writeTinySetup(dir);
    const o = tinyOptions(dir);
    const lines: string[] = [];
    const [report] = await runFinetune(o, {
      ...quiet,
      log: (l) => lines.push(l),
      given: new Set(["lr"]),
    });

    const model = await loadModelFolder(o.out);
    assert.deepEqual(model.config.hidden_size, TINY_CONFIG.hidden_size);
    const fromDisk = await readReportJson(`${o.out}/report.json`);
    assert.equal(fromDisk.method, "hd-pissa");
    assert.equal(fromDisk.config.workers, 2);
    assert.equal(fromDisk.config.seed, 42);
    // The recipe of a user's model: a given flag, values the caller set, the paper's values.
    const recipe = fromDisk.recipe!;
    assert.deepEqual(recipe.lr, { value: 5e-3, source: "flag" });
    assert.deepEqual(recipe.workers, { value: 2, source: "set by the caller" });
    assert.deepEqual(recipe.epochs, { value: 3, source: "set by the caller" });
    assert.deepEqual(recipe.schedule, { value: "cosine", source: "HD-PiSSA paper, Table 5" });
    assert.equal(recipe.batch_size.value, fromDisk.config.batch_size);
    assert.ok(
      lines.some((l) => l.startsWith(`defaults for ${o.model} (hd-pissa`)),
      lines.join("\n"),
    );
    assert.ok(lines.includes("  lr 5e-3 (flag)"), lines.join("\n"));
    assert.deepEqual(fromDisk.steps.map((s) => s.step), [0, 1, 2, 3]);
    assert.ok(fromDisk.steps.every((s) => Number.isFinite(s.loss)));
    const html = await Deno.readTextFile(`${o.out}/report.html`);
    assert.match(html, /<svg/);
    // --device auto (the default): every worker on a CPU adapter is recorded with why.
    const devices = fromDisk.devices!;
    const onCpu = devices.flatMap((d, k) => /llvmpipe|lavapipe|swiftshader/i.test(d) ? [k] : []);
    assert.deepEqual(fromDisk.device_fallback!.map((f) => f.worker), onCpu);
    for (const f of fromDisk.device_fallback!) assert.ok(f.reason.length > 0);

    // Bytes: each worker sends its (ΔA, ΔB) and receives all K of them, plus small framing and
    // the step's token ids (4 examples · 64 positions · 5 bytes).
    const f = report.bytes_per_step_formula!;
    const linears = adaptableLinears(TINY_CONFIG);
    const floats = linears.reduce((n, l) => n + (l.in + l.out) * 2, 0);
    assert.equal(f.sent, 4 * floats);
    assert.equal(f.received, 2 * 4 * floats);
    for (const s of report.steps) {
      assert.ok(s.bytes_sent >= f.sent && s.bytes_sent < f.sent + 2048, `sent ${s.bytes_sent}`);
      assert.ok(
        s.bytes_received >= f.received && s.bytes_received < f.received + 4096,
        `received ${s.bytes_received}`,
      );
    }
    // HD-PiSSA's ΔW after 4 steps has rank above PiSSA's bound 2r = 4 in every matrix.
    for (const l of linears) {
      const r = report.effective_rank[l.name]["rank_1e-2"];
      assert.ok(r > 4 && r <= Math.min(l.in, l.out), `${l.name}: rank ${r}`);
    }
    assert.ok(report.eval.before && report.eval.after);
    const testLines = (await Deno.readTextFile(o.eval!)).trim().split("\n").length;
    assert.equal(report.eval.after!.n, testLines);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("seeded runs are bit-identical, and --resume from a checkpoint ends on the same bits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-det-" });
  try {
    await writeTinySetup(dir);
    const a = tinyOptions(dir, { out: `${dir}/a`, checkpointEvery: 2, eval: null });
    const b = tinyOptions(dir, { out: `${dir}/b`, checkpointEvery: 2, eval: null });
    await runFinetune(a, quiet);
    await runFinetune(b, quiet);
    assert.ok(await sameBytes(`${a.out}/model.safetensors`, `${b.out}/model.safetensors`));

    // A run that stopped after its checkpoint: keep only the checkpoint, then resume.
    const c = `${dir}/c`;
    await copyCheckpoints(a.out, c);
    const resumed = tinyOptions(dir, { out: c, resume: c, checkpointEvery: 2, eval: null });
    const [r] = await runFinetune(resumed, quiet);
    assert.deepEqual(r.steps.map((s) => s.step), [0, 1, 2, 3]);
    assert.ok(await sameBytes(`${a.out}/model.safetensors`, `${c}/model.safetensors`));

    // A different seed gives different weights (the comparison above can fail).
    const d = tinyOptions(dir, { out: `${dir}/d`, seed: 7, eval: null });
    await runFinetune(d, quiet);
    assert.ok(!(await sameBytes(`${a.out}/model.safetensors`, `${d.out}/model.safetensors`)));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--resume of PiSSA (whose live W is the residual) ends on the same bits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-pissa-resume-" });
  try {
    await writeTinySetup(dir);
    const over = { method: "pissa" as const, checkpointEvery: 2, eval: null };
    const a = tinyOptions(dir, { ...over, out: `${dir}/a` });
    await runFinetune(a, quiet);
    const c = `${dir}/c`;
    await copyCheckpoints(a.out, c);
    const [r] = await runFinetune(tinyOptions(dir, { ...over, out: c, resume: c }), quiet);
    assert.deepEqual(r.steps.map((s) => s.step), [0, 1, 2, 3]);
    assert.ok(await sameBytes(`${a.out}/model.safetensors`, `${c}/model.safetensors`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--compare: one folder per method, compare.json, and ranks HD-PiSSA > PiSSA (≤ 2r) ≥ LoRA (≤ r)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-cmp-" });
  try {
    await writeTinySetup(dir);
    const o = tinyOptions(dir, { compare: true, maxSteps: 3 });
    const lines: string[] = [];
    const reports = await runFinetune(o, { ...quiet, log: (l) => lines.push(l) });
    assert.deepEqual(reports.map((r) => r.method), ["hd-pissa", "pissa", "lora", "full"]);
    // The base model is evaluated once, by the first run; every report carries that evaluation.
    assert.equal(lines.filter((l) => /evaluating the base model/.test(l)).length, 1);
    assert.ok(reports[0].eval.before);
    for (const r of reports) assert.deepEqual(r.eval.before, reports[0].eval.before);
    const cmp = JSON.parse(await Deno.readTextFile(`${o.out}/compare.json`));
    assert.deepEqual(Object.keys(cmp.methods).sort(), ["full", "hd-pissa", "lora", "pissa"]);
    for (const m of ["hd-pissa", "pissa", "lora", "full"]) {
      await loadModelFolder(`${o.out}/${m}`);
    }
    const ranks = (m: string) => {
      const r = reports.find((x) => x.method === m)!;
      return Object.values(r.effective_rank).map((e) => e["rank_1e-2"]);
    };
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const [hd, pissa, lora] = [ranks("hd-pissa"), ranks("pissa"), ranks("lora")];
    assert.ok(pissa.every((r) => r <= 4), `PiSSA ranks ${pissa}`);
    assert.ok(lora.every((r) => r <= 2), `LoRA ranks ${lora}`);
    assert.ok(
      mean(hd) > mean(pissa) && mean(pissa) >= mean(lora),
      `${mean(hd)} ${mean(pissa)} ${mean(lora)}`,
    );
    assert.ok(await Deno.stat(`${o.out}/compare.html`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A safetensors file's header and data section. */
async function readRaw(path: string) {
  const b = await Deno.readFile(path);
  const n = Number(new DataView(b.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + n)));
  const tensor = (name: string) => {
    const [s, e] = header[name].data_offsets as number[];
    return b.subarray(8 + n + s, 8 + n + e);
  };
  return { header, tensor, dataBytes: b.length - 8 - n };
}

Deno.test("a sharded BF16 checkpoint in: the same out, rounded from the f32 run; --save-dtype float32", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-bf16-" });
  try {
    await writeTinySetup(dir);
    const config = { ...TINY_CONFIG, tie_word_embeddings: true };
    const model = `${dir}/bf16`;
    const extra = { initializer_range: 0.02, transformers_version: "4.44.2", use_cache: true };
    await writeShardedModel(model, config, initWeights(config, new Rng(5), 0.08), {
      shards: 3,
      dtype: "BF16",
      extra,
    });
    const generation = '{"do_sample": false, "eos_token_id": 2}\n';
    await Deno.writeTextFile(`${model}/generation_config.json`, generation);
    const inputConfig = JSON.parse(await Deno.readTextFile(`${model}/config.json`));
    const common = { model, eval: null, maxSteps: 2 };
    const bf = tinyOptions(dir, { ...common, out: `${dir}/bf`, maxShardSize: 20_000 });
    const f32 = tinyOptions(dir, { ...common, out: `${dir}/f32`, saveDtype: "float32" });
    await runFinetune(bf, quiet);
    await runFinetune(f32, quiet);

    // The f32 run: one F32 file, torch_dtype float32, still tied.
    const single = await readRaw(`${f32.out}/model.safetensors`);
    const names = expectedTensors(config).map((t) => t.name);
    assert.deepEqual(
      Object.keys(single.header).filter((k) => k !== "__metadata__").sort(),
      [
        ...names,
      ].sort(),
    );
    for (const n of names) assert.equal(single.header[n].dtype, "F32");
    assert.deepEqual(single.header.__metadata__, { format: "pt" });
    assert.ok(!(await exists(`${f32.out}/model.safetensors.index.json`)));
    const f32Config = JSON.parse(await Deno.readTextFile(`${f32.out}/config.json`));
    assert.deepEqual(f32Config, { ...inputConfig, torch_dtype: "float32" });

    // The BF16 run: shards of at most 20 kB whose index matches them.
    const index = JSON.parse(await Deno.readTextFile(`${bf.out}/model.safetensors.index.json`));
    const files = [...new Set(Object.values(index.weight_map) as string[])].sort();
    assert.ok(files.length >= 3, `${files.length} shards`);
    assert.ok(!(await exists(`${bf.out}/model.safetensors`)));
    assert.deepEqual(Object.keys(index.weight_map).sort(), [...names].sort(), "tied: no lm_head");
    let total = 0;
    const baseFiles = JSON.parse(
      await Deno.readTextFile(`${model}/model.safetensors.index.json`),
    ).weight_map;
    let changed = 0;
    const unchanged: string[] = [];
    for (const file of files) {
      const shard = await readRaw(`${bf.out}/${file}`);
      total += shard.dataBytes;
      assert.ok(shard.dataBytes <= 20_000, `${file}: ${shard.dataBytes} bytes`);
      assert.deepEqual(shard.header.__metadata__, { format: "pt" });
      const held = Object.keys(shard.header).filter((k) => k !== "__metadata__").sort();
      assert.deepEqual(held, names.filter((n) => index.weight_map[n] === file).sort());
      for (const n of held) {
        assert.equal(shard.header[n].dtype, "BF16");
        // Each value is the f32 run's value rounded to nearest even.
        const want = new Uint16Array(single.tensor(n).length / 4);
        const bits = new Uint32Array(single.tensor(n).slice().buffer);
        bits.forEach((b, i) => want[i] = f32BitsToBf16(b));
        const got = new Uint16Array(shard.tensor(n).slice().buffer);
        assert.deepEqual(got, want, n);
        // Tensors the run did not change are the input's bits.
        const input = (await readRaw(`${model}/${baseFiles[n]}`)).tensor(n);
        if (input.some((v, i) => v !== shard.tensor(n)[i])) changed++;
        else unchanged.push(n);
      }
    }
    assert.ok(changed > 0, "the run changed some matrices");
    // HD-PiSSA trains the linear layers only: the embeddings and norms come back bit for bit.
    for (const n of names.filter((n) => !n.endsWith("_proj.weight"))) {
      assert.ok(unchanged.includes(n), `${n} unchanged`);
    }
    assert.deepEqual(index.metadata, { total_size: total });
    const bfConfig = JSON.parse(await Deno.readTextFile(`${bf.out}/config.json`));
    assert.deepEqual(bfConfig, { ...inputConfig, torch_dtype: "bfloat16" });
    assert.equal(bfConfig.tie_word_embeddings, true);
    for (const out of [bf.out, f32.out]) {
      assert.equal(await Deno.readTextFile(`${out}/generation_config.json`), generation);
    }
    // The written folder loads, and as the input's sharding and dtype.
    const back = await loadModelFolder(bf.out);
    assert.equal(back.source.sharded, true);
    assert.deepEqual(new Set(back.source.dtypes.values()), new Set(["BF16"]));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("workers on this host read the model folder: the same bits as through the object store", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-job-" });
  try {
    await writeTinySetup(dir);
    // PiSSA too: its live W is the residual, set by the method's init after the base load.
    for (const method of ["hd-pissa", "pissa"] as const) {
      const over = { method, eval: null };
      const direct = tinyOptions(dir, { ...over, out: `${dir}/${method}-direct` });
      const stored = tinyOptions(dir, {
        ...over,
        out: `${dir}/${method}-stored`,
        loadVia: "store",
      });
      const lines: string[] = [];
      await runFinetune(direct, { ...quiet, log: (l) => lines.push(l) });
      await runFinetune(stored, { ...quiet, log: (l) => lines.push(l) });
      assert.ok(
        lines.some((l) => l.startsWith("workers 0, 1 load the weights from the model folder")),
        lines.join("\n"),
      );
      assert.ok(lines.includes("workers 0, 1 load the weights through the object store"));
      const a = await readReportJson(`${direct.out}/report.json`);
      const b = await readReportJson(`${stored.out}/report.json`);
      assert.deepEqual(a.weights_loaded_via, ["folder", "folder"]);
      assert.deepEqual(b.weights_loaded_via, ["store", "store"]);
      // Through the store W went as one packed chunk (the tiny model is far under the 64 MiB
      // chunk): the driver held W's bytes once, as the plan counts it.
      assert.equal(a.weights_store, undefined);
      const wBytes = 4 *
        expectedTensors(TINY_CONFIG).reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
      assert.equal(b.weights_store!.chunks, 1);
      assert.equal(b.weights_store!.peak_bytes, wBytes);
      assert.equal(b.memory_plan!.host.serialized, wBytes);
      assert.equal(b.memory_plan!.host.store_chunk, wBytes);
      assert.equal(a.memory_plan!.host.serialized, 0);
      assert.ok(
        await sameBytes(`${direct.out}/model.safetensors`, `${stored.out}/model.safetensors`),
        method,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a weight file changed after the driver's digest: the worker refuses it (WeightDigestError)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-job-" });
  const system = await init({ nodes: 1 });
  try {
    await writeTinySetup(dir);
    const folder = `${dir}/model`;
    const digests = await weightFileDigests(folder);
    const file = `${folder}/model.safetensors`;
    const bytes = await Deno.readFile(file);
    bytes[bytes.length - 1] ^= 1;
    await Deno.writeFile(file, bytes);
    const o = tinyOptions(dir);
    const w = await system.spawn(GpuWorker, { worker: 0 });
    const e = await w.load({
      weights: { via: "folder", folder, digests },
      seqLen: o.seqLen,
      microBatch: o.microBatch,
      maxMicroBatches: 1,
      settings: workerSettings(o),
      updateSubject: "tamper.update",
      updateFloats: 1,
    }, { timeoutMs: 60_000 }).catch((e) => e);
    assert.ok(e instanceof WeightDigestError, String(e));
    assert.equal(e.file, "model.safetensors");
    assert.equal(e.expected, digests["model.safetensors"]);
    assert.match(e.message, /model\.safetensors.*the file changed/);
  } finally {
    await system.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

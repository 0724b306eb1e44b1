// The model part of bench/gpu_machine.sh: a random-init model folder of a shape, HD-PiSSA
// fine-tuning steps through the job (Driver and K worker processes on this machine's one device)
// for each K, and the logits of the K = 1 run's output folder on a fixed batch, written for the
// transformers comparison (bench/peers/hf_logits.py).
//
//   deno run -A bench/gpu_machine_model.ts --shape tiny|1b --workers 1,2 --out DIR
//
// Prints one line per figure ("model ...: value unit") and, for a figure it cannot measure,
// "not measured: <reason>". The 1B shape (Llama-3.2-1B) comes from bench/support/random_model.ts
// (the real-sizes work); without that module in the checkout the 1B figures are not measured.
import { defineFlags } from "../cli/flags.ts";
import { benchModelConfig, writeBenchModel } from "./support/bench_model.ts";
import { runOne, startSystem } from "../actors/job.ts";
import { loadModelFolder } from "../model/safetensors.ts";
import { LlamaGpu } from "../model/llama.ts";
import { Gpu } from "../gpu/engine.ts";
import { defaultOptions, type FinetuneOptions } from "../train/cli/options.ts";
import type { RunReport } from "../train/report/report.ts";

const FLAGS = defineFlags({
  name: "gpu_machine_model",
  about: "HD-PiSSA steps and output logits of a random model, for bench/gpu_machine.sh.",
  usage: "deno run -A bench/gpu_machine_model.ts [flags]",
  flags: {
    shape: { type: "enum", choices: ["tiny", "1b"], default: "tiny", help: "model shape" },
    workers: { type: "list", default: ["1", "2"], help: "worker counts K to step with" },
    steps: { type: "int", default: 3, min: 2, help: "steps per run (the first is not timed)" },
    "seq-len": { type: "int", default: 64, min: 8, help: "tokens per example" },
    "batch-size": { type: "int", default: 8, min: 1, help: "examples per step" },
    out: { type: "string", default: "", help: "folder for the models and logits (required)" },
  },
});
const { options: opt } = FLAGS.main();

/** The benchmarks' model, 256 positions: seconds on lavapipe. */
const TINY = benchModelConfig(256);

if (!opt.out) {
  console.error("gpu_machine_model: --out DIR is required");
  Deno.exit(2);
}
const out = opt.out;
const base = `${out}/base`;
await Deno.mkdir(out, { recursive: true });

async function writeBase(): Promise<string | null> {
  if (opt.shape === "tiny") {
    await writeBenchModel(base, TINY);
    return null;
  }
  const url = new URL("support/random_model.ts", import.meta.url);
  try {
    await Deno.stat(url);
  } catch {
    return "bench/support/random_model.ts (the random real-shape model writer of the real-sizes " +
      "work) is not in this checkout";
  }
  const mod = await import(url.href);
  const t0 = performance.now();
  await mod.writeRandomModel(base, mod.LLAMA32_1B, { seed: 1 });
  console.log(
    `model 1b: wrote the random-init folder in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  return null;
}

const missing = await writeBase();
if (missing) {
  for (const K of opt.workers) {
    console.log(`model ${opt.shape} hd-pissa K=${K}: not measured: ${missing}`);
  }
  console.log(`model ${opt.shape} logits: not measured: ${missing}`);
  Deno.exit(0);
}

const io = { log: () => {}, isTty: false, progress: () => {} };
let firstOut: string | null = null;
for (const k of opt.workers) {
  const K = Number(k);
  const o: FinetuneOptions = {
    ...defaultOptions(),
    model: base,
    eval: null,
    method: "hd-pissa",
    workers: K,
    rank: 4,
    alpha: 4,
    batchSize: opt.batchSize,
    microBatch: Math.max(1, Math.floor(opt.batchSize / K)),
    seqLen: opt.seqLen,
    maxSteps: opt.steps,
    warmupRatio: 0,
    checkpointEvery: 0,
    checksumEvery: opt.steps,
    out: `${out}/hd-pissa-K${K}`,
    overwrite: true,
  };
  const label = `model ${opt.shape} hd-pissa K=${K}`;
  let report: RunReport;
  try {
    const system = await startSystem(o);
    try {
      report = await runOne(system, o, io);
    } finally {
      await system.shutdown();
    }
  } catch (e) {
    console.log(`${label}: not measured: ${(e as Error).message.split("\n")[0]}`);
    continue;
  }
  firstOut ??= o.out;
  const steps = report.steps.slice(1) as (RunReport["steps"][number] & Record<string, number>)[];
  const mean = (f: (s: typeof steps[number]) => number) =>
    steps.reduce((a, s) => a + f(s), 0) / steps.length;
  const ms = mean((s) => s.ms), compute = mean((s) => s.compute_ms);
  const tokens = opt.batchSize * opt.seqLen;
  console.log(`${label}: step ${ms.toFixed(1)} ms (${(tokens / ms * 1000).toFixed(0)} tokens/s)`);
  console.log(
    `${label}: forward+backward+optimizer ${compute.toFixed(1)} ms (max over workers; ` +
      `${(tokens / compute * 1000).toFixed(0)} tokens/s)`,
  );
  console.log(`${label}: update ${mean((s) => s.update_ms).toFixed(1)} ms`);
}

// Logits of the first run's output model on a fixed batch, for the transformers comparison.
if (!firstOut) {
  console.log(`model ${opt.shape} logits: not measured: no run finished`);
  Deno.exit(0);
}
const folder = await loadModelFolder(firstOut);
const S = 16;
const ids = Int32Array.from({ length: S }, (_, j) => j === 0 ? 1 : 3 + ((j * 37) % 200));
const gpu = await Gpu.open({ log: () => {} });
try {
  const model = await LlamaGpu.create(gpu, folder.config, folder.tensors, {
    maxRows: 1,
    seqLen: S,
    gradients: "none",
  });
  const logits = await model.logits({
    ids,
    targetMask: new Uint8Array(S),
    targets: 0,
    rows: 1,
    seqLen: S,
  });
  await Deno.writeFile(`${out}/logits.f32`, new Uint8Array(logits.buffer));
  await Deno.writeTextFile(
    `${out}/logits.json`,
    JSON.stringify({
      model: firstOut,
      ids: [...ids],
      shape: [S, folder.config.vocab_size],
    }),
  );
  console.log(`model ${opt.shape} logits: written (${S} positions) for ${firstOut}`);
} finally {
  gpu.close();
}

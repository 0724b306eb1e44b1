// The LLaMA model on the WebGPU engine at the shipped base model's size (hidden 128, intermediate
// 344, 4 layers, 4 heads on 2 KV heads, vocab 259; ~0.79M parameters), 16 sequences of 64:
//
// - one training step (forward + backward, one submit) with adapters (r = 4 on all seven linear
//   kinds, exact mute) and with full-weight gradients, and the forward alone;
// - a whole simulated HD-PiSSA step: K = 4 workers one after another on this device (each:
//   forward + backward of its 4 examples, clip by global norm, AdamW delta of its slice),
//   then the HD-PiSSA update of every adapted matrix applied four times (as four workers
//   would, each with all K pairs); and, in the same run, the same step in PyTorch on the CPU
//   (bench/peers/torch_step.py, float32, the same shapes, adapters and optimizer), with the
//   ratio of the two throughputs ("not measured", and why, when PyTorch is not installed);
// - greedy generation with the KV cache: 64 prompts of 20 tokens, 20 new tokens each.
//
// Times are end to end (recording on the host, submit, wait); each figure is the median of a
// few repetitions after a warm-up (other processes share the cores).
//
//   deno task bench model
import { percentile, type Report } from "./figure.ts";
import { benchModelConfig } from "./support/bench_model.ts";
import {
  adamwDelta,
  type AdapterSteps,
  clipByGlobalNorm,
  Gpu,
  type GpuTensor,
  hdPissaUpdate,
  type Recorder,
  sumSquares,
} from "../gpu/mod.ts";
import {
  adaptableLinears,
  expectedTensors,
  LINEAR_KINDS,
  parameterCount,
} from "../model/config.ts";
import { LlamaGpu, type LlamaGpuOptions } from "../model/llama.ts";
import type { HostTensor } from "../model/safetensors.ts";
import type { MicroBatch } from "../model/batch.ts";
import { Rng } from "../core/rng.ts";
import { findTorchPython } from "../scripts/torch_python.ts";

const CONFIG = benchModelConfig(128);
const SEQ = 64;
const BATCH = 16;
const K = 4;
const RANK = 4;
const LR = 1e-4;
const CLIP = 1.0;
const REPS = 3;

function randomWeights(rng: Rng): Map<string, HostTensor> {
  const w = new Map<string, HostTensor>();
  for (const spec of expectedTensors(CONFIG)) {
    const fanIn = spec.shape[spec.shape.length - 1];
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const data = spec.shape.length === 1
      ? new Float32Array(n).fill(1)
      : rng.normals(n, 1 / Math.sqrt(fanIn));
    w.set(spec.name, { shape: [...spec.shape], data });
  }
  return w;
}

/** Examples of random bytes whose second half is the response (the loss targets). */
function batchOf(rng: Rng, rows: number): MicroBatch {
  const ids = new Int32Array(rows * SEQ);
  const targetMask = new Uint8Array(rows * SEQ);
  let targets = 0;
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < SEQ; j++) {
      ids[r * SEQ + j] = j === 0 ? 1 : 3 + rng.int(256);
      if (j >= SEQ / 2) {
        targetMask[r * SEQ + j] = 1;
        targets++;
      }
    }
  }
  return { ids, targetMask, targets, rows, seqLen: SEQ };
}

type TorchPeer =
  | { ok: true; torch: string; threads: number; tried: number[]; ms: number; tokensPerS: number }
  | { ok: false; reason: string };

/**
 * Runs bench/peers/torch_step.py: the simulated HD-PiSSA step of `run` below (same config,
 * batch, sequence length, workers, rank, clipping and AdamW), in PyTorch on the CPU.
 */
async function torchPeer(): Promise<TorchPeer> {
  const found = await findTorchPython();
  if (!found.ok) return found;
  const spec = {
    config: CONFIG,
    seq: SEQ,
    batch: BATCH,
    workers: K,
    rank: RANK,
    lr: LR,
    clip: CLIP,
    reps: REPS,
  };
  const script = new URL("peers/torch_step.py", import.meta.url).pathname;
  console.error(`model bench: PyTorch peer (${found.python}, torch ${found.torch})`);
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(found.python, {
      args: [script, JSON.stringify(spec)],
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(600_000),
    }).output();
  } catch (e) {
    return { ok: false, reason: `${found.python} ${script} did not run: ${e}` };
  }
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
    return { ok: false, reason: `${script} failed (exit ${out.code}): ${err || text}` };
  }
  try {
    const r = JSON.parse(text.split("\n").pop()!);
    if (!(r.tokens_per_s > 0) || !(r.ms > 0)) throw new Error("no tokens_per_s or ms");
    return {
      ok: true,
      torch: r.torch,
      threads: r.threads,
      tried: r.runs.map((x: { threads: number }) => x.threads),
      ms: r.ms,
      tokensPerS: r.tokens_per_s,
    };
  } catch (e) {
    return { ok: false, reason: `${script} printed no figures (${e}): ${text.slice(0, 200)}` };
  }
}

/** Median milliseconds of `body` over `reps` runs after one warm-up run. */
async function timeMs(body: () => Promise<void>, reps: number): Promise<number> {
  await body();
  const ms: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await body();
    ms.push(performance.now() - t0);
  }
  return percentile(ms, 50);
}

export async function run(report: Report): Promise<void> {
  const gpu = await Gpu.open();
  const rng = new Rng(17);
  const weights = randomWeights(rng);
  const tokens = BATCH * SEQ;
  const tag = gpu.info.isCpu ? "cpu" : "gpu";
  console.error(
    `model bench on ${gpu.info.description} (${tag}); ${parameterCount(CONFIG)} parameters, ` +
      `${BATCH}x${SEQ} tokens`,
  );
  const models: LlamaGpu[] = [];
  const held: GpuTensor[] = [];
  const make = async (options: LlamaGpuOptions) => {
    const m = await LlamaGpu.create(gpu, CONFIG, weights, options);
    models.push(m);
    return m;
  };
  try {
    const step = async (model: LlamaGpu, label: string, forwardOnly = false) => {
      const rec = gpu.record({ label });
      if (forwardOnly) model.recordForward(rec);
      else model.recordForwardBackward(rec);
      const loss = rec.read(model.loss);
      await rec.submit();
      if (!Number.isFinite((await loss)[0])) throw new Error(`${label}: loss is not finite`);
    };

    // ---- one step of 16x64 ---------------------------------------------------------------
    const batch = batchOf(rng, BATCH);
    const adapterModel = await make({
      maxRows: BATCH,
      seqLen: SEQ,
      adapters: { targets: LINEAR_KINDS, rank: RANK },
      gradients: "adapters",
    });
    for (const name of adapterModel.adapterNames()) {
      const a = adapterModel.adapter(name);
      adapterModel.writeAdapter(name, rng.normals(a.A.size, 0.05), rng.normals(a.B.size, 0.05));
    }
    adapterModel.setStepBatches([batch]);
    const msFwd = await timeMs(() => step(adapterModel, "forward", true), 5);
    report({ name: `forward (loss) ${BATCH}x${SEQ} time`, value: msFwd, unit: "ms" });
    report({
      name: `forward (loss) ${BATCH}x${SEQ} throughput`,
      value: tokens / msFwd * 1e3,
      unit: "tokens/s",
    });
    const msAd = await timeMs(() => step(adapterModel, "adapters"), 5);
    report({ name: `forward+backward, adapters r${RANK} x7, time`, value: msAd, unit: "ms" });
    report({
      name: `forward+backward, adapters r${RANK} x7, throughput`,
      value: tokens / msAd * 1e3,
      unit: "tokens/s",
    });
    adapterModel.close();

    const fullModel = await make({ maxRows: BATCH, seqLen: SEQ, gradients: "weights" });
    fullModel.setStepBatches([batch]);
    const msFull = await timeMs(() => step(fullModel, "full"), 5);
    report({ name: "forward+backward, full-weight gradients, time", value: msFull, unit: "ms" });
    report({
      name: "forward+backward, full-weight gradients, throughput",
      value: tokens / msFull * 1e3,
      unit: "tokens/s",
    });
    fullModel.close();

    // ---- a whole simulated HD-PiSSA step -------------------------------------------------
    const worker = await make({
      maxRows: BATCH / K,
      seqLen: SEQ,
      adapters: { targets: LINEAR_KINDS, rank: RANK },
      gradients: "adapters",
    });
    worker.setAdapterScales(0, 1);
    const linears = adaptableLinears(CONFIG, LINEAR_KINDS);
    const t = (shape: number[], scale = 0) => {
      const x = scale > 0
        ? gpu.upload(rng.normals(shape.reduce((a, b) => a * b, 1), scale), shape)
        : gpu.zeros(shape);
      held.push(x);
      return x;
    };
    // Per worker and matrix: its fixed slice (A_k, B_k), AdamW moments, and its step (ΔA, ΔB).
    const slices = Array.from({ length: K }, () =>
      new Map(linears.map((l) => {
        const s = {
          pair: {
            A: t([RANK, l.in], 0.05),
            B: t([l.out, RANK], 0.05),
            dA: t([RANK, l.in]),
            dB: t([l.out, RANK]),
          } as AdapterSteps,
          mA: t([RANK, l.in]),
          vA: t([RANK, l.in]),
          mB: t([l.out, RANK]),
          vB: t([l.out, RANK]),
        };
        return [l.name, s];
      })));
    const scratch = new Map(linears.map((l) => [l.name, {
      L: t([l.out, 2 * K * RANK]),
      R: t([2 * K * RANK, l.in]),
    }]));
    const grads = worker.adapterNames().flatMap((
      n,
    ) => [worker.adapter(n).gA, worker.adapter(n).gB]);
    const sumSq = t([1]);
    const partials = t([grads.length]);
    const shards = Array.from({ length: K }, () => batchOf(rng, BATCH / K));
    let adamStep = 0;

    const workerStep = async (k: number) => {
      worker.setStepBatches([shards[k]]);
      const rec: Recorder = gpu.record({ label: `worker ${k}` });
      for (const [name, s] of slices[k]) {
        const slot = worker.adapter(name);
        rec.copy(slot.A, s.pair.A);
        rec.copy(slot.B, s.pair.B);
      }
      worker.recordForwardBackward(rec);
      sumSquares(rec, sumSq, partials, grads);
      clipByGlobalNorm(rec, grads, sumSq, CLIP);
      const hyper = { lr: LR, step: adamStep };
      for (const [name, s] of slices[k]) {
        const slot = worker.adapter(name);
        adamwDelta(rec, { param: s.pair.A, grad: slot.gA, m: s.mA, v: s.vA }, s.pair.dA, hyper);
        adamwDelta(rec, { param: s.pair.B, grad: slot.gB, m: s.mB, v: s.vB }, s.pair.dB, hyper);
      }
      const loss = rec.read(worker.loss);
      await rec.submit();
      if (!Number.isFinite((await loss)[0])) throw new Error("worker loss is not finite");
    };
    const update = async () => {
      const rec = gpu.record({ label: "hd-pissa update" });
      for (let applied = 0; applied < K; applied++) {
        for (const l of linears) {
          const pairs = slices.map((s) => s.get(l.name)!.pair);
          const { L, R } = scratch.get(l.name)!;
          hdPissaUpdate(rec, worker.weight(l.name), pairs, L, R, { c: 1 / K, s: 1 });
        }
      }
      await rec.submit();
    };
    const hdStep = async () => {
      adamStep++;
      for (let k = 0; k < K; k++) await workerStep(k);
      await update();
    };
    const msHd = await timeMs(hdStep, REPS);
    const hdTokens = tokens / msHd * 1e3;
    report({
      name: `HD-PiSSA step, K${K} simulated workers, r${RANK}, time`,
      value: msHd,
      unit: "ms",
    });
    report({
      name: `HD-PiSSA step, K${K} simulated workers, r${RANK}, throughput`,
      value: hdTokens,
      unit: "tokens/s",
    });
    // The PyTorch peer runs now, on its own, on the same cores.
    const peer = await torchPeer();
    if (peer.ok) {
      // The fastest of the thread counts it tried (see bench/peers/torch_step.py).
      const threads = `${peer.threads} thread${peer.threads === 1 ? "" : "s"}`;
      const label = `torch ${peer.torch}, ${threads}, fastest of ${peer.tried.join(", ")}`;
      report({ name: `PyTorch CPU, same step (${label}), time`, value: peer.ms, unit: "ms" });
      report({
        name: `PyTorch CPU, same step (${label}), throughput`,
        value: peer.tokensPerS,
        unit: "tokens/s",
      });
      report({
        name: "HD-PiSSA step vs PyTorch CPU, same run",
        value: hdTokens / peer.tokensPerS,
        unit: "x",
      });
    } else {
      report({
        name: "HD-PiSSA step vs PyTorch CPU",
        value: NaN,
        unit: "x",
        note: `not measured: ${peer.reason}`,
      });
    }
    const msUpdate = await timeMs(update, 3);
    report({
      name: `HD-PiSSA update of all ${linears.length} matrices, x${K}`,
      value: msUpdate,
      unit: "ms",
    });
    worker.close();

    // ---- generation ----------------------------------------------------------------------
    const gen = await make({ maxRows: 1, seqLen: 1, gradients: "none" });
    const prompts = Array.from(
      { length: 64 },
      () => [1, ...Array.from({ length: 19 }, () => 3 + rng.int(256))],
    );
    const msGen = await timeMs(async () => {
      const out = await gen.generate(prompts, { maxNewTokens: 20, stopIds: [] });
      if (out.some((o) => o.length !== 20)) throw new Error("generation stopped early");
    }, 3);
    report({ name: "generate 64 prompts x20, 20 new tokens, time", value: msGen, unit: "ms" });
    report({
      name: "generate 64 prompts x20, 20 new tokens, throughput",
      value: 64 * 20 / msGen * 1e3,
      unit: "new tokens/s",
    });
  } finally {
    for (const m of models) m.close();
    for (const x of held) gpu.release(x);
    gpu.close();
  }
}

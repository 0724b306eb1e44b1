// The memory plan (train/plan/memory.ts) against what the GPU model really allocates: the
// weights exactly (the same buffers in the same size classes), the model's whole allocation
// (weights, adapters, gradients, activations, logits chunk, scratch) within 10 % (in fact
// exactly, but for the clipping buffers the method adds).
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { LINEAR_KINDS, type LlamaConfig } from "../model/config.ts";
import { LlamaGpu, type LlamaGpuOptions } from "../model/llama.ts";
import { LlamaParams } from "../model/llama_params.ts";
import {
  checkMemoryPlan,
  DEFAULT_LIMITS,
  hostNeed,
  memoryPlan,
  MemoryPlanError,
  type MemoryPlanInput,
  planLines,
} from "../train/plan/memory.ts";
import { fullTrainableDefault } from "../train/methods/layout.ts";
import { GQA_TIED, GQA_UNTIED, randomWeights, Rng } from "./support/model_gpu.ts";
import { LLAMA32_1B } from "../bench/support/random_model.ts";

async function measure(
  config: LlamaConfig,
  options: LlamaGpuOptions,
  maxBindingBytes?: number,
): Promise<{ weights: number; model: number; limits: MemoryPlanInput["limits"] }> {
  const weights = randomWeights(config, new Rng(7));
  // A fresh device each time: released buffers stay in the pool and count in its bytes.
  const bytesOf = async (f: (gpu: Gpu) => Promise<{ release(): void } | { close(): void }>) => {
    const gpu = await Gpu.open({ maxBindingBytes });
    try {
      const b0 = gpu.stats().bytes;
      await f(gpu);
      return { bytes: gpu.stats().bytes - b0, limits: { ...DEFAULT_LIMITS, ...gpu.limits } };
    } finally {
      gpu.close();
    }
  };
  const w = await bytesOf((gpu) =>
    Promise.resolve(LlamaParams.create(gpu, config, weights, { gradNames: [] }))
  );
  const m = await bytesOf((gpu) => LlamaGpu.create(gpu, config, weights, options));
  return { weights: w.bytes, model: m.bytes, limits: m.limits };
}

interface Case {
  name: string;
  config: LlamaConfig;
  plan: Omit<MemoryPlanInput, "config" | "limits">;
  binding?: number;
}

const LORA: Case = {
  name: "lora, GQA untied, micro-batch 4 × 16, 2 slots",
  config: { ...GQA_UNTIED, hidden_size: 64, intermediate_size: 128, vocab_size: 300 },
  plan: {
    method: "lora",
    workers: 2,
    rank: 4,
    targets: LINEAR_KINDS,
    microBatch: 4,
    maxMicroBatches: 2,
    seqLen: 16,
  },
};

const FULL_SPLIT: Case = {
  name: "full, GQA tied, micro-batch 2 × 24, split vocabulary",
  config: { ...GQA_TIED, hidden_size: 48, intermediate_size: 96, vocab_size: 2000 },
  plan: {
    method: "full",
    workers: 1,
    rank: 4,
    targets: LINEAR_KINDS,
    microBatch: 2,
    maxMicroBatches: 1,
    seqLen: 24,
  },
  binding: 64 * 1024,
};

// The MLP's matrices [128, 64] f32 (32 KiB) over a 20 KiB limit: row blocks, their gradients
// (full) and the shared column block counted as the model allocates them.
const LINEAR_SPLIT: Case = {
  name: "full, GQA untied, MLP in row blocks, micro-batch 1 × 24",
  config: { ...GQA_UNTIED, hidden_size: 64, intermediate_size: 128, vocab_size: 2000 },
  plan: { ...FULL_SPLIT.plan, microBatch: 1 },
  binding: 20 * 1024,
};

const cases: Case[] = [
  LORA,
  FULL_SPLIT,
  LINEAR_SPLIT,
  {
    ...LINEAR_SPLIT,
    name: "lora, GQA untied, MLP in row blocks",
    plan: { ...LORA.plan, microBatch: 1, seqLen: 24, maxMicroBatches: 1 },
  },
  {
    name: "lora, GQA untied, --recompute, 3 layers, micro-batch 4 × 16, 2 slots",
    config: { ...LORA.config, num_hidden_layers: 3 },
    plan: { ...LORA.plan, recompute: true },
  },
  {
    ...FULL_SPLIT,
    name: "full, GQA tied, --recompute, micro-batch 2 × 24, split vocabulary",
    plan: { ...FULL_SPLIT.plan, recompute: true },
  },
];

for (const c of cases) {
  Deno.test(`memory plan vs the GPU model's allocation: ${c.name}`, async () => {
    const options: LlamaGpuOptions = c.plan.method === "full"
      ? { gradients: "weights", trainable: fullTrainableDefault, maxRows: 0, seqLen: 0 }
      : {
        adapters: { targets: c.plan.targets, rank: c.plan.rank },
        gradients: "adapters",
        maxRows: 0,
        seqLen: 0,
      };
    options.maxRows = c.plan.microBatch;
    options.seqLen = c.plan.seqLen;
    options.maxMicroBatches = c.plan.maxMicroBatches;
    options.recompute = c.plan.recompute;
    const got = await measure(c.config, options, c.binding);
    const plan = memoryPlan({ ...c.plan, config: c.config, limits: got.limits });
    const w = plan.worker;
    // The model's part: everything but the method's moments (and HD-PiSSA's pairs, none here).
    const model = w.weights + w.adapters + w.gradients + w.activations + w.workspace;
    console.log(
      `${c.name}: weights plan ${w.weights} measured ${got.weights}; model plan ${model} measured ${got.model}`,
    );
    assert.equal(w.weights, got.weights, "weights bytes");
    assert.ok(Math.abs(model - got.model) / got.model < 0.1, `model ${model} vs ${got.model}`);
    // Exactly, but for the two clipping buffers (256 B each here) the method allocates later.
    assert.equal(model - 512, got.model);
  });
}

/** HD-PiSSA at K = 2, r = 2 on the untied GQA config, one micro-batch of 2 × 8. */
const SMALL: MemoryPlanInput = {
  config: GQA_UNTIED,
  method: "hd-pissa",
  workers: 2,
  rank: 2,
  targets: LINEAR_KINDS,
  microBatch: 2,
  maxMicroBatches: 1,
  seqLen: 8,
};

Deno.test("checkMemoryPlan refuses a buffer over maxBufferSize and a total over the device", () => {
  const plan = memoryPlan({ ...SMALL, microBatch: 4096, seqLen: 4096 });
  assert.throws(
    () => checkMemoryPlan(plan, DEFAULT_LIMITS),
    (e: unknown) =>
      e instanceof MemoryPlanError && e.code === "MEMORY_PLAN" && /--micro-batch/.test(e.message) &&
      /maxBufferSize/.test(e.message),
  );
  const small = memoryPlan({ ...SMALL, method: "lora" });
  checkMemoryPlan(small, { ...DEFAULT_LIMITS, deviceMemory: 1 << 30, hostMemory: 4 * 2 ** 30 });
  assert.throws(
    () => checkMemoryPlan(small, { ...DEFAULT_LIMITS, deviceMemory: 1000 }),
    /a worker needs/,
  );
  assert.throws(
    () => checkMemoryPlan(small, { ...DEFAULT_LIMITS, hostMemory: 1000 }, true),
    /their devices in host memory/,
  );
});

Deno.test("the host term counts the driver and every worker process, devices in host memory", () => {
  const GiB = 1024 ** 3;
  const planInput = (workers: number, loadVia: "auto" | "store"): MemoryPlanInput => ({
    config: LLAMA32_1B.config,
    method: "hd-pissa",
    workers,
    rank: 4,
    targets: LINEAR_KINDS,
    microBatch: 1,
    maxMicroBatches: 1,
    seqLen: 32,
    svd: "randomized",
    loadVia,
    limits: {
      ...DEFAULT_LIMITS,
      maxBufferSize: Infinity,
      maxStorageBufferBindingSize: 128 << 20,
    },
  });
  const plan = (workers: number, loadVia: "auto" | "store") =>
    memoryPlan(planInput(workers, loadVia));
  const p2 = plan(2, "auto");
  const W = p2.host.weights;
  assert.ok(Math.abs(W / 4 - 1.2358e9) < 1e6, `parameters ${W / 4}`);
  // The folder load: no serialized copy in the driver; a worker holds at most a few pieces of W
  // (the largest one a 128 MiB row block of the embedding table) while it loads.
  assert.equal(p2.host.serialized, 0);
  assert.equal(p2.host.total, W + p2.host.svd + (p2.host.runtime ?? NaN));
  const wl = p2.host.worker!;
  assert.ok(wl.load <= 3 * (128 << 20) && wl.load >= 3 * 64 * (1 << 20), `load ${wl.load}`);
  assert.equal(hostNeed(p2, true), p2.host.total + 2 * (p2.worker.total + wl.total));
  assert.equal(hostNeed(p2, false), p2.host.total + 2 * wl.total);
  // Through the object store W travels in 64 MiB chunks: the driver holds one, a worker the one
  // it copies from and the one arriving; never a serialized copy of W.
  const s2 = plan(2, "store");
  const chunk = 64 << 20;
  assert.equal(s2.host.store_chunk, chunk);
  assert.equal(s2.host.serialized, chunk);
  assert.equal(s2.host.total, p2.host.total + chunk);
  assert.equal(s2.host.worker!.load, wl.load + 2 * chunk);
  assert.equal(p2.host.store_chunk, 0);
  // A smaller chunk (as a test's) is what the plan counts, cut to whole f32 values; a W smaller
  // than a chunk is one chunk of its own size.
  const small = memoryPlan({ ...planInput(2, "store"), storeChunkBytes: 1 << 20 });
  assert.equal(small.host.serialized, 1 << 20);
  const odd = memoryPlan({ ...planInput(2, "store"), storeChunkBytes: (1 << 20) + 3 });
  assert.equal(odd.host.store_chunk, 1 << 20);
  const whole = memoryPlan({ ...planInput(2, "store"), storeChunkBytes: 2 * W });
  assert.equal(whole.host.store_chunk, W);
  assert.ok(planLines(s2).some((l) => /serialized 64\.0 MiB \(one object-store chunk/.test(l)));

  // On a 24 GiB host whose workers' devices live in host memory (lavapipe): K = 2 from the
  // folder or through the object store fits (17 GiB); K = 4 (28 GiB) is refused with what to
  // change, and so is a store load on a host just too small for it, naming --load-via auto.
  const host = { ...DEFAULT_LIMITS, maxBufferSize: Infinity, hostMemory: 24 * GiB };
  checkMemoryPlan(p2, host, true);
  checkMemoryPlan(s2, host, true);
  assert.throws(
    () => checkMemoryPlan(plan(4, "auto"), host, true),
    (e: unknown) =>
      e instanceof MemoryPlanError && /4 worker process\(es\)/.test(e.message) &&
      /fewer --workers/.test(e.message) && /--weights-dtype bf16/.test(e.message) &&
      /host has 24\.0 GiB/.test(e.message),
  );
  assert.throws(
    () => checkMemoryPlan(s2, { ...host, hostMemory: hostNeed(s2, true) - 1 }, true),
    (e: unknown) => e instanceof MemoryPlanError && /--load-via auto/.test(e.message),
  );
  // The same K = 4 run on devices of their own only needs the processes' host memory.
  checkMemoryPlan(plan(4, "auto"), { ...host, deviceMemory: 80 * GiB }, false);

  // A private nats-server (no --nats) is counted: its own memory, and through the object store
  // a chunk per worker being delivered, the driver's put and the store's last block; with
  // --nats it runs elsewhere and is not.
  const own = (loadVia: "auto" | "store") =>
    memoryPlan({ ...planInput(2, loadVia), privateServer: true });
  assert.equal(p2.host.server, undefined);
  assert.equal(own("auto").host.server, 128 << 20);
  assert.equal(own("store").host.server, (128 << 20) + 4 * chunk);
  assert.equal(hostNeed(own("store"), true), hostNeed(s2, true) + (128 << 20) + 4 * chunk);
  assert.ok(planLines(own("store")).some((l) => /private nats-server: 384\.0 MiB/.test(l)));
  assert.throws(
    () => checkMemoryPlan(own("store"), { ...host, hostMemory: hostNeed(s2, true) }, true),
    (e: unknown) =>
      e instanceof MemoryPlanError && /the nats-server \(384\.0 MiB\)/.test(e.message),
  );
});

Deno.test("with --recompute the plan counts one set of layer activations, not one per layer", () => {
  const acts = (layers: number, recompute: boolean) =>
    memoryPlan({
      ...SMALL,
      config: { ...SMALL.config, num_hidden_layers: layers },
      recompute,
    }).worker.activations;
  // A layer more adds its input to the residual stream, and without --recompute its own set.
  const resid = acts(3, true) - acts(2, true);
  const set = acts(3, false) - acts(2, false) - resid;
  assert.ok(resid > 0 && set > resid, `resid ${resid}, set ${set}`);
  assert.equal(acts(1, true), acts(1, false), "one layer: nothing to share");
  assert.equal(acts(5, false) - acts(5, true), 4 * set, "five layers: four sets fewer");
});

/** Llama-3-8B's shape (hidden 4096, MLP 14336, vocabulary 128,256). */
const LLAMA3_8B: LlamaConfig = {
  ...GQA_UNTIED,
  hidden_size: 4096,
  intermediate_size: 14336,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  vocab_size: 128256,
};

Deno.test("at Llama-3-8B's shape the MLP's matrices are row blocks; an activation over the binding limit is refused", () => {
  const limits = { ...DEFAULT_LIMITS, maxBufferSize: Infinity };
  const plan = (method: "hd-pissa" | "full", seqLen: number) =>
    memoryPlan({
      config: LLAMA3_8B,
      method,
      workers: 2,
      rank: 16,
      targets: LINEAR_KINDS,
      microBatch: 1,
      maxMicroBatches: 1,
      seqLen,
      trainable: (n) => n.includes("layers"),
      limits,
    });
  // W [14336, 4096] f32 is 224 MiB: two blocks of at most 128 MiB, no buffer over the limit.
  for (const method of ["hd-pissa", "full"] as const) {
    const p = plan(method, 2048);
    assert.ok(
      p.worker.largest.bytes <= 128 << 20,
      `${method}: ${JSON.stringify(p.worker.largest)}`,
    );
    checkMemoryPlan(p, limits);
  }
  // Full fine-tuning counts the gradient and both moments of every block.
  const full = plan("full", 2048);
  const linears = 32 * (2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 14336 * 4096) * 4;
  assert.ok(full.worker.optimizer >= 2 * linears && full.worker.gradients >= linears);
  // At 4096 positions an MLP activation [4096, 14336] f32 (224 MiB) is one binding: refused
  // before anything starts, naming it and what to change.
  assert.throws(
    () => checkMemoryPlan(plan("hd-pissa", 4096), limits),
    (e: unknown) =>
      e instanceof MemoryPlanError &&
      /the buffer gate \(224\.0 MiB, activations\)/.test(e.message) &&
      /maxStorageBufferBindingSize 128\.0 MiB/.test(e.message) && /--seq-len/.test(e.message),
  );
});

Deno.test("with --svd-device gpu the randomized SVDs leave the driver's plan for the workers'", () => {
  const base: MemoryPlanInput = {
    config: LLAMA32_1B.config,
    method: "hd-pissa",
    workers: 2,
    rank: 16,
    targets: LINEAR_KINDS,
    microBatch: 1,
    maxMicroBatches: 1,
    seqLen: 32,
    svdThreads: 2,
    loadVia: "auto",
    limits: { ...DEFAULT_LIMITS, maxBufferSize: Infinity },
  };
  const input = (svdDevice: MemoryPlanInput["svdDevice"], svd: MemoryPlanInput["svd"]) =>
    memoryPlan({ ...base, svd, svdDevice });
  const cpu = input("cpu", "randomized");
  const gpu = input("gpu", "randomized");
  const auto = input("auto", "randomized");
  // On the driver: two threads, each with its own copy of the largest matrix (the MLP's
  // [8192, 2048]) and its workspace; no SVD on the workers.
  assert.ok(cpu.host.svd > 2 * 8192 * 2048 * 4, `driver svd ${cpu.host.svd}`);
  assert.equal(cpu.host.worker!.svd, undefined);
  // On the devices: nothing on the driver (every matrix randomized); each worker holds one
  // float64 workspace of the sketch's width (2·16 + 10 columns) over the largest matrix's
  // rows and columns, and the device its f32 products.
  assert.equal(gpu.host.svd, 0);
  assert.equal(gpu.host.worker!.svd, (8192 + 2048) * 42 * 6 * 8);
  assert.equal(gpu.worker.workspace - cpu.worker.workspace >= (8192 + 2048) * 42 * 2 * 4, true);
  assert.equal(gpu.host.total, cpu.host.total - cpu.host.svd);
  // Loading W (a few 128 MiB pieces) is the worker's larger phase here.
  assert.equal(gpu.host.worker!.total, cpu.host.worker!.total);
  assert.ok(planLines(gpu).some((l) => /then the SVDs on its device/.test(l)));
  // auto is decided after the plan, once the workers report their devices: counted both ways.
  assert.equal(auto.host.svd, cpu.host.svd);
  assert.equal(auto.host.worker!.svd, gpu.host.worker!.svd);
  assert.equal(auto.worker.workspace, gpu.worker.workspace);
  // With the exact SVD for the small matrices (auto), those stay on the driver: one at a time.
  const mixed = memoryPlan({
    ...base,
    config: { ...LLAMA32_1B.config, num_key_value_heads: 2 },
    svd: "auto",
    svdDevice: "gpu",
  });
  // k/v: [2·64, 2048], short side 128 ≤ 1024: exact, on the driver's own thread.
  const exact = (2 * 128 * 2048 + (128 + 2048 + 1) * 128) * 4;
  assert.equal(mixed.host.svd, exact);
});

// The mute ablation's fixed rescale (--mute-rescale fixed, the public HD-PiSSA code's ×1e16)
// against the float64 reference on a fresh random tiny model: with γ and σ = f32(γ·s), every
// adapter gradient must be the reference gradient times γ·1e16 (instead of times 1 with the 1/γ
// rescale); and HdPissaWorker must set that rescale from the flag, and scale its slices to slice
// 0's norm under --slice-scale equal.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { LINEAR_KINDS } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import { FIXED_MUTE_RESCALE, HdPissaWorker } from "../train/methods/hd_pissa.ts";
import { parseFinetuneArgs, workerSettings } from "../train/cli/options.ts";
import type { WorkerMethodConfig } from "../train/methods/worker.ts";
import {
  gpuStep,
  GQA_UNTIED,
  randomAdapterFactors,
  randomMicroBatch,
  randomWeights,
  referenceAdapters,
  referenceStep,
  relErr,
  Rng,
  WorstError,
  writeAdapters,
} from "./support/model_gpu.ts";

const S = 9;
const TOL = 1e-5;

Deno.test("fixed mute rescale: adapter gradients are the reference's times γ·1e16", async () => {
  const gpu = await Gpu.open();
  const config = GQA_UNTIED;
  const rank = 3;
  const rng = new Rng(Date.now() >>> 0);
  const weights = randomWeights(config, rng);
  const batches = [randomMicroBatch(config, rng, 3, S), randomMicroBatch(config, rng, 2, S)];
  const factors = randomAdapterFactors(config, rank, rng);
  const model = await LlamaGpu.create(gpu, config, weights, {
    maxRows: 3,
    seqLen: S,
    maxMicroBatches: 2,
    adapters: { targets: LINEAR_KINDS, rank },
    gradients: "adapters",
  });
  try {
    writeAdapters(model, factors);
    const s = 1.5;
    for (const gamma of [1e-2, 1e-8]) {
      const sigma = Math.fround(gamma * s);
      model.setAdapterScales(sigma, s, { gamma, rescale: FIXED_MUTE_RESCALE });
      model.setStepBatches(batches);
      const got = await gpuStep(model, batches);
      const ref = referenceStep(
        config,
        weights,
        batches,
        referenceAdapters(factors, rank, s, sigma, model.adapterNames()),
      );
      // What the fixed rescale computes: σ·dY·1e16 where the exact gradient has s·dY.
      const factor = Math.fround(sigma / s) * FIXED_MUTE_RESCALE;
      const worst = new WorstError();
      for (const n of model.adapterNames()) {
        const scaled = (g: Float32Array) => Float64Array.from(g, (v) => v / factor);
        worst.add(`g_A ${n}`, relErr(scaled(got.gradA.get(n)!), ref.gradA.get(n)!));
        worst.add(`g_B ${n}`, relErr(scaled(got.gradB.get(n)!), ref.gradB.get(n)!));
      }
      console.log(`γ ${gamma}: gradients / (γ·1e16) against the reference, worst ${worst}`);
      assert.ok(worst.value < TOL, `γ ${gamma}: ${worst}`);
      // And they really are that much larger than the 1/γ rescale's (not silently the same).
      assert.ok(Math.abs(factor - 1) > 1e5);
    }
    assert.throws(() => model.setAdapterScales(0, s, { rescale: 1e16 }), /numeric mute/);
  } finally {
    model.close();
    gpu.close();
  }
});

Deno.test("HdPissaWorker: --mute-rescale fixed and --slice-scale equal reach the worker", async () => {
  const gpu = await Gpu.open();
  const config = GQA_UNTIED;
  const rank = 1, K = 2;
  const rng = new Rng(Date.now() >>> 0);
  const weights = randomWeights(config, rng);
  const slice0 = randomAdapterFactors(config, rank, rng);
  const slice1 = randomAdapterFactors(config, rank, rng);
  const o = parseFinetuneArgs([
    "--workers",
    String(K),
    "--rank",
    String(rank),
    "--mute",
    "1e-8",
    "--mute-rescale",
    "fixed",
    "--slice-scale",
    "equal",
    "--batch-size",
    "8",
  ]).options;
  const settings = workerSettings(o);
  const c: WorkerMethodConfig = { ...settings, method: "hd-pissa" };
  const model = await LlamaGpu.create(gpu, config, weights, {
    maxRows: 3,
    seqLen: S,
    adapters: { targets: LINEAR_KINDS, rank },
    gradients: "adapters",
  });
  try {
    const factors = new Map(
      model.adapterNames().map((n) => [n, [slice0.get(n)!, slice1.get(n)!]]),
    );
    const worker = new HdPissaWorker(model, c, 1, { factors, residuals: new Map() });
    const scales = model.adapterScales;
    assert.equal(scales.gamma, 1e-8);
    assert.equal(scales.rescale, FIXED_MUTE_RESCALE);
    assert.equal(scales.sigma, Math.fround(1e-8 * (o.alpha / rank)));
    const norm = (x: ArrayLike<number>) => Math.sqrt(Array.from(x).reduce((a, v) => a + v * v, 0));
    for (const n of model.adapterNames()) {
      const bufs = worker.factorBuffers(n);
      const [A0, B0, A1, B1] = await gpu.readMany([bufs[0].A, bufs[0].B, bufs[1].A, bufs[1].B]);
      // Slice 0 unchanged; slice 1 scaled by ‖A_0‖/‖A_1‖ (both factors), so ‖A_1‖ = ‖A_0‖.
      assert.ok(relErr(A0 as Float32Array, slice0.get(n)!.A) < 1e-7, `${n} A_0 changed`);
      const f = norm(slice0.get(n)!.A) / norm(slice1.get(n)!.A);
      const want = Float64Array.from(slice1.get(n)!.B, (v) => v * f);
      assert.ok(relErr(B1 as Float32Array, want) < 1e-6, `${n} B_1 not scaled by ${f}`);
      assert.ok(Math.abs(norm(A1) / norm(A0) - 1) < 1e-6, `${n}: ‖A_1‖ ≠ ‖A_0‖`);
      assert.ok(B0.length > 0);
    }
  } finally {
    model.close();
    gpu.close();
  }
});

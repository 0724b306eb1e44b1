/**
 * SVD timings on the CPU (float64): the exact SVD used for matrices up to 1024 on the long side,
 * and the randomized SVD (Halko et al., with power iterations) used above that, at the Llama-3-8B
 * shapes (4096×4096 attention, 4096×14336 MLP) on float32 weights with a known decaying spectrum
 * (σ_i = 0.95^i, 256 components), so that its orthonormality and its agreement with the true top
 * subspace are measured too. The big shapes run on one thread, on the worker pool (`svd_pool.ts`,
 * one thread per core), with a check that both give the same bits, and with the passes over W on
 * the WebGPU device (`svd_gpu.ts`: f32 matmuls, W uploaded once per shape in row blocks, as a
 * worker holds it), one after the other per rank. Then the peer: PyTorch's `torch.svd_lowrank`
 * (what PEFT's `pissa_niter_4` calls) on the CPU, same shapes, ranks, niter and spectrum
 * (bench/peers/torch_svd.py; its own random factors).
 */
import type { Report } from "./figure.ts";
import { randomizedSvd, svd } from "../train/linalg/svd.ts";
import { knownSpectrumMatrix, svdAgreement } from "../train/linalg/svd_check.ts";
import { defaultSvdThreads, SvdPool } from "../train/linalg/svd_pool.ts";
import { gpuRandomizedSvd, uploadForSvd } from "../train/linalg/svd_gpu.ts";
import { Rng } from "../core/rng.ts";
import { Gpu } from "../gpu/engine.ts";
import { findTorchPython } from "../scripts/torch_python.ts";
import type { SvdResult } from "../train/linalg/svd.ts";

function randomMatrix(m: number, n: number, seed: number): Float64Array {
  const rng = new Rng(seed);
  const a = new Float64Array(m * n);
  for (let i = 0; i < a.length; i++) a[i] = rng.normal();
  return a;
}

function time(f: () => void, reps: number): number {
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    f();
    best = Math.min(best, performance.now() - t0);
  }
  return best;
}

export async function run(report: Report): Promise<void> {
  for (const [m, n] of [[128, 128], [344, 128], [512, 512]]) {
    const a = randomMatrix(m, n, m + n);
    report({ name: `exact SVD ${m}x${n}`, value: time(() => svd(a, m, n), 3), unit: "ms" });
  }
  const big = randomMatrix(1024, 1024, 7);
  for (const [rank, niter] of [[16, 2], [16, 4], [64, 4]]) {
    report({
      name: `randomized SVD 1024x1024, rank ${rank}, niter ${niter}`,
      value: time(() => randomizedSvd(big, 1024, 1024, rank, { niter, seed: 1 }), 2),
      unit: "ms",
    });
  }
  const spectrum = Array.from({ length: 256 }, (_, i) => 0.95 ** i);
  // The pool's threads are created once (their start is not timed) and ended at the end.
  using pool = new SvdPool();
  report({
    name: "SVD pool threads (navigator.hardwareConcurrency)",
    value: pool.threads,
    unit: "",
  });
  const gpu = await Gpu.open();
  report({
    name: `GPU: ${gpu.info.description}`,
    value: gpu.info.isCpu ? 1 : 0,
    unit: "(1 = CPU)",
  });
  report({
    name: "GPU binding limit (W is split in row blocks above it)",
    value: gpu.limits.maxStorageBufferBindingSize / 2 ** 20,
    unit: "MiB",
  });
  const load = Deno.loadavg()[0];
  try {
    for (const [m, n] of SHAPES) {
      const truth = knownSpectrumMatrix(m, n, spectrum, m + n, true);
      let t0 = performance.now();
      const W = uploadForSvd(gpu, truth.W as Float32Array, m, n);
      await gpu.sync();
      report({
        name: `GPU upload of W ${m}x${n} f32 (${W.parts.length} row blocks)`,
        value: performance.now() - t0,
        unit: "ms",
      });
      for (const rank of RANKS) {
        const label = `randomized SVD ${m}x${n} f32, rank ${rank}, niter ${NITER}`;
        // The three paths one right after the other, so that a load from elsewhere on the
        // machine perturbs them alike.
        t0 = performance.now();
        const one = randomizedSvd(truth.W, m, n, rank, { niter: NITER, seed: 1 });
        const msOne = performance.now() - t0;
        t0 = performance.now();
        const r = await pool.randomizedSvd(truth.W, m, n, rank, { niter: NITER, seed: 1 });
        const msPool = performance.now() - t0;
        t0 = performance.now();
        const g = await gpuRandomizedSvd(gpu, W, rank, { niter: NITER, seed: 1 });
        const msGpu = performance.now() - t0;
        report({ name: `${label}: 1 thread`, value: msOne, unit: "ms" });
        report({ name: `${label}: pool of ${pool.threads}`, value: msPool, unit: "ms" });
        report({ name: `${label}: GPU (f32 passes)`, value: msGpu, unit: "ms" });
        report({ name: `${label}: pool speedup`, value: msOne / msPool, unit: "x" });
        report({ name: `${label}: GPU speedup`, value: msOne / msGpu, unit: "x" });
        const same = (["U", "S", "Vt"] as const).every((k) =>
          r[k].every((v, i) => Object.is(v, one[k][i]))
        );
        report({
          name: `${label}: pool bits = 1-thread bits`,
          value: same ? 1 : 0,
          unit: "(1 = yes)",
        });
        quality(report, `${label}, host`, svdAgreement(r, truth));
        quality(report, `${label}, GPU`, svdAgreement(g, truth));
        const vsHost = svdAgreement(g, asKnown(r));
        report({
          name: `${label}: GPU vs host, sin of largest angle`,
          value: Math.max(vsHost.leftAngle, vsHost.rightAngle),
          unit: "",
        });
      }
      for (const p of W.parts) gpu.release(p);
    }
  } finally {
    gpu.close();
  }
  await torchPeer(report, spectrum);
  report({ name: "load average (1 min) at the start of the big shapes", value: load, unit: "" });
  report({ name: "load average (1 min) at the end", value: Deno.loadavg()[0], unit: "" });
}

const SHAPES = [[4096, 4096], [4096, 14336]];
const RANKS = [16, 64];
const NITER = 4;

function quality(report: Report, label: string, a: ReturnType<typeof svdAgreement>): void {
  report({ name: `${label}: ‖QᵀQ − I‖∞`, value: a.orthonormality, unit: "" });
  report({ name: `${label}: max rel. error of top σ`, value: a.singularValueError, unit: "" });
  report({
    name: `${label}: sin of largest principal angle (left, right)`,
    value: Math.max(a.leftAngle, a.rightAngle),
    unit: "",
  });
}

/** `r` as the "truth" of `svdAgreement`: its factors, V = Vtᵀ. */
function asKnown(r: SvdResult) {
  const V = new Float64Array(r.n * r.k);
  for (let i = 0; i < r.k; i++) {
    for (let j = 0; j < r.n; j++) V[j * r.k + i] = r.Vt[i * r.n + j];
  }
  return { W: new Float64Array(0), U: r.U, V, s: r.S };
}

/**
 * bench/peers/torch_svd.py on the same shapes, ranks, niter and spectrum, with as many torch
 * threads as the pool has: q = rank (PEFT's call) and q = rank + 10 (this project's sketch).
 */
async function torchPeer(report: Report, spectrum: number[]): Promise<void> {
  const found = await findTorchPython();
  if (!found.ok) {
    report({ name: "torch.svd_lowrank peer", value: NaN, unit: "", note: found.reason });
    return;
  }
  const spec = {
    shapes: SHAPES,
    ranks: RANKS,
    niter: NITER,
    spectrum,
    seed: 1,
    oversample: 10,
    threads: defaultSvdThreads(),
  };
  const script = new URL("peers/torch_svd.py", import.meta.url).pathname;
  const out = await new Deno.Command(found.python, {
    args: [script, JSON.stringify(spec)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
    report({
      name: "torch.svd_lowrank peer",
      value: NaN,
      unit: "",
      note: `${script} failed (exit ${out.code}): ${err || text}`,
    });
    return;
  }
  const r = JSON.parse(text.split("\n").pop()!);
  report({ name: `torch ${r.torch} threads (torch.set_num_threads)`, value: r.threads, unit: "" });
  for (const x of r.runs) {
    const label = `torch.svd_lowrank ${x.m}x${x.n} f32, rank ${x.rank}, q ${x.q}, niter ${NITER}`;
    report({ name: `${label}: time`, value: x.ms, unit: "ms" });
    report({ name: `${label}: ‖QᵀQ − I‖∞`, value: x.orthonormality, unit: "" });
    report({ name: `${label}: max rel. error of top σ`, value: x.sigma_rel_error, unit: "" });
    report({ name: `${label}: sin of largest principal angle`, value: x.sin_angle, unit: "" });
  }
}

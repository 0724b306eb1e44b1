// WebGPU kernel throughput on the adapter at hand: matmul GFLOP/s for square and skinny
// adapter shapes in every layout, and the time of the other kernels at the small training
// config (hidden 128, 4 heads, 2 KV heads, head 32, vocab 259, 16 sequences of 64).
//
// GPU time comes from timestamp queries around a block of repeated dispatches when the device
// has them, wall-clock time of a submit otherwise (which then includes the driver's latency).
// Each figure is the best of 5 trials.
//
// `--gpu-mode machine` (bench/gpu_machine.sh) measures instead what a GPU is judged by: square
// matmul 1024–8192 in f32 and with two f16 operands (f32 accumulation) in TFLOP/s, attention
// forward+backward at 8 × 1024 tokens of 32 heads of 64 (8 KV heads), and the cross-entropy of
// 2048 positions over Llama 3's 128,256-token vocabulary (1,024 over 32,000 when that does not
// fit one binding); `machine-small` runs the same at sizes a CPU adapter finishes in seconds.
import { percentile, type Report } from "./figure.ts";
import { Gpu } from "../gpu/engine.ts";
import type { Recorder } from "../gpu/recorder.ts";
import type { GpuTensor } from "../gpu/tensor.ts";
import { matmul, type MatmulLayout } from "../gpu/kernels/matmul.ts";
import { attentionBackward, attentionForward } from "../gpu/kernels/attention.ts";
import { crossEntropy } from "../gpu/kernels/cross_entropy.ts";
import { rmsnormBackward, rmsnormForward } from "../gpu/kernels/rmsnorm.ts";
import { swigluBackward, swigluForward } from "../gpu/kernels/swiglu.ts";
import { type AdapterSteps, hdPissaUpdate } from "../gpu/kernels/hd_pissa.ts";
import { Rng } from "../core/rng.ts";
import { f32BitsToF16 } from "../gpu/half.ts";

/**
 * Milliseconds of one `body`: the best of `trials` trials of `reps` repetitions each (the best,
 * not the median, because other processes share these cores and only ever slow a trial down).
 */
async function timeIt(
  gpu: Gpu,
  body: (rec: Recorder) => void,
  reps: number,
  trials = 5,
): Promise<number> {
  await gpu.run(body); // compile and warm up
  const ms: number[] = [];
  for (let t = 0; t < trials; t++) {
    const rec = gpu.record();
    rec.timed("bench", () => {
      for (let r = 0; r < reps; r++) body(rec);
    });
    const res = await rec.submit();
    ms.push((res.gpuMs ?? res.wallMs) / reps);
  }
  return percentile(ms, 0);
}

export interface GpuBenchOptions {
  gpuMode?: "kernels" | "machine" | "machine-small";
}

export async function run(report: Report, options: GpuBenchOptions = {}): Promise<void> {
  const mode = options.gpuMode ?? "kernels";
  if (mode !== "kernels") return await runMachine(report, mode === "machine-small");
  const gpu = await Gpu.open();
  const rng = new Rng(7);
  const held: GpuTensor[] = [];
  const rand = (shape: number[], scale = 1) => {
    const t = gpu.upload(rng.normals(shape.reduce((a, b) => a * b), scale), shape);
    held.push(t);
    return t;
  };
  const empty = (shape: number[], dtype: "f32" | "i32" = "f32") => {
    const t = gpu.tensor(shape, dtype);
    held.push(t);
    return t;
  };
  try {
    const tag = `${gpu.info.isCpu ? "cpu" : "gpu"}/${gpu.matmulVariant}`;
    const timing = gpu.info.timestamps ? "timestamp" : "wall";
    console.error(`gpu bench on ${gpu.info.description} (${tag}, ${timing} timing)`);

    const mm = async (name: string, layout: MatmulLayout, M: number, N: number, K: number) => {
      const a = rand(layout === "TN" ? [K, M] : [M, K]);
      const b = rand(layout === "NT" ? [N, K] : [K, N]);
      const c = empty([M, N]);
      const flop = 2 * M * N * K;
      const reps = Math.max(1, Math.min(200, Math.round(2e9 / flop)));
      const ms = await timeIt(gpu, (rec) => matmul(rec, layout, c, a, b), reps);
      report({
        name: `matmul ${name} ${layout} ${M}x${N}x${K} (${tag})`,
        value: flop / ms / 1e6,
        unit: "GFLOP/s",
      });
    };
    for (const s of [256, 512, 1024]) await mm("square", "NT", s, s, s);
    await mm("square", "NN", 512, 512, 512);
    await mm("square", "TN", 512, 512, 512);
    // Linear layers of the small config (T = 1024 tokens) and their adapter products, r = 4.
    await mm("q_proj fwd", "NT", 1024, 128, 128);
    await mm("gate_proj fwd", "NT", 1024, 344, 128);
    await mm("down_proj dX", "NN", 1024, 344, 128);
    await mm("x·Aᵀ", "NT", 1024, 4, 128);
    await mm("dY·B", "NN", 1024, 4, 128);
    await mm("g_B=dYᵀ(xAᵀ)", "TN", 128, 4, 1024);
    await mm("g_A=(dY B)ᵀx", "TN", 4, 128, 1024);
    await mm("full dW=dYᵀx", "TN", 128, 128, 1024);

    // Other kernels at the small config.
    const B = 16, S = 64, T = B * S, H = 128, nH = 4, nKV = 2, hd = 32, V = 259, I = 344;
    const shape = { batch: B, seqLen: S, nHeads: nH, nKvHeads: nKV, headDim: hd };
    const q = rand([T, nH * hd]),
      k = rand([T, nKV * hd]),
      v = rand([T, nKV * hd]),
      o = empty([T, nH * hd]);
    const lse = empty([T, nH]), delta = empty([T, nH]), dout = rand([T, nH * hd]);
    const dq = empty([T, nH * hd]), dk = empty([T, nKV * hd]), dv = empty([T, nKV * hd]);
    await gpu.run((rec) => attentionForward(rec, { out: o, lse, q, k, v }, shape));
    const kernel = async (name: string, body: (rec: Recorder) => void, reps = 10) => {
      report({ name: `${name} (${tag})`, value: await timeIt(gpu, body, reps), unit: "ms" });
    };
    await kernel(
      `attention forward B${B} S${S} nH${nH} nKV${nKV} hd${hd}`,
      (rec) => attentionForward(rec, { out: o, lse, q, k, v }, shape),
    );
    await kernel(
      `attention backward B${B} S${S} nH${nH} nKV${nKV} hd${hd}`,
      (rec) => attentionBackward(rec, { dq, dk, dv, dout, q, k, v, out: o, lse, delta }, shape),
    );
    const x = rand([T, H]), w = rand([H]), y = empty([T, H]), rstd = empty([T]), dx = empty([T, H]);
    await kernel(`rmsnorm forward+backward ${T}x${H}`, (rec) => {
      rmsnormForward(rec, y, rstd, x, w, 1e-5);
      rmsnormBackward(rec, dx, y, x, w, rstd);
    });
    const g = rand([T, I]),
      u = rand([T, I]),
      h = empty([T, I]),
      dg = empty([T, I]),
      du = empty([T, I]);
    await kernel(`swiglu forward+backward ${T}x${I}`, (rec) => {
      swigluForward(rec, h, g, u);
      swigluBackward(rec, dg, du, h, g, u);
    });
    const logits = rand([T, V], 2), dl = empty([T, V]), losses = empty([T]), loss = empty([1]);
    const targets = gpu.upload(Int32Array.from({ length: T }, () => rng.int(V)));
    const weights = gpu.upload(new Float32Array(T).fill(1 / T));
    held.push(targets, weights);
    await kernel(
      `cross-entropy loss+grad ${T}x${V}`,
      (rec) => crossEntropy(rec, { logits, targets, weights, losses, loss, dlogits: dl }),
    );
    const K = 4, r = 4;
    const pairs: AdapterSteps[] = Array.from(
      { length: K },
      () => ({ A: rand([r, H]), B: rand([I, r]), dA: rand([r, H]), dB: rand([I, r]) }),
    );
    const W = rand([I, H]), L = empty([I, 2 * K * r]), R = empty([2 * K * r, H]);
    await kernel(
      `hd-pissa update W[${I},${H}] K${K} r${r}`,
      (rec) => hdPissaUpdate(rec, W, pairs, L, R, { c: 1 / K, s: 1 }),
    );
  } finally {
    for (const t of held) gpu.release(t);
    gpu.close();
  }
}

/** The `machine` modes (see the header). */
async function runMachine(report: Report, small: boolean): Promise<void> {
  const gpu = await Gpu.open({ log: (l) => console.error(l) });
  const rng = new Rng(8);
  const held: GpuTensor[] = [];
  const keep = (t: GpuTensor) => (held.push(t), t);
  const rand = (shape: number[], scale = 1) =>
    keep(gpu.upload(rng.normals(shape.reduce((a, b) => a * b), scale), shape));
  const empty = (shape: number[]) => keep(gpu.tensor(shape));
  const release = () => {
    for (const t of held.splice(0)) gpu.release(t);
  };
  try {
    const m = gpu.matmulChoice;
    const tag = `${gpu.matmulVariant}${m.variant === "tiled" ? ` ${m.tile}` : ""}`;
    console.error(
      `gpu machine bench on ${gpu.info.description} (${gpu.info.isCpu ? "CPU adapter" : "GPU"}; ` +
        `matmul ${tag}, ${m.source}; shader-f16 ${gpu.info.shaderF16 ? "yes" : "no"}; ` +
        `${gpu.info.timestamps ? "timestamp" : "wall"} timing)`,
    );
    const sizes = small ? [256, 512] : [1024, 2048, 4096, 8192];
    const limit = gpu.limits.maxStorageBufferBindingSize;
    for (const dtype of ["f32", "f16"] as const) {
      for (const n of sizes) {
        if (n * n * 4 > limit) {
          report({
            name: `matmul ${dtype} NT ${n}³`,
            value: NaN,
            unit: "TFLOP/s",
            note: `not measured: ${n}×${n} f32 is over the binding limit ${limit}`,
          });
          continue;
        }
        let a: GpuTensor, b: GpuTensor;
        if (dtype === "f32") {
          a = rand([n, n]);
          b = rand([n, n]);
        } else {
          const bits = () => {
            const x = rng.normals(n * n);
            const w = new Uint32Array(n * n / 2);
            const h = new Uint16Array(w.buffer);
            for (let i = 0; i < x.length; i++) h[i] = f32ToF16(x[i]);
            return h;
          };
          a = keep(gpu.uploadHalf(bits(), "f16", [n, n]));
          b = keep(gpu.uploadHalf(bits(), "f16", [n, n]));
        }
        const c = empty([n, n]);
        const flop = 2 * n * n * n;
        const reps = Math.max(1, Math.min(50, Math.round((small ? 2e8 : 2e11) / flop)));
        const ms = await timeIt(gpu, (rec) => matmul(rec, "NT", c, a, b), reps, 3);
        report({
          name: `matmul ${dtype} NT ${n}³ (${tag})`,
          value: flop / ms / 1e9,
          unit: "TFLOP/s",
        });
        release();
      }
    }
    // Attention forward + backward.
    const [B, S, nH, nKV, hd] = small ? [2, 128, 4, 2, 32] : [8, 1024, 32, 8, 64];
    const T = B * S;
    const shape = { batch: B, seqLen: S, nHeads: nH, nKvHeads: nKV, headDim: hd };
    const q = rand([T, nH * hd]), k = rand([T, nKV * hd]), v = rand([T, nKV * hd]);
    const o = empty([T, nH * hd]), lse = empty([T, nH]), delta = empty([T, nH]);
    const dout = rand([T, nH * hd]);
    const dq = empty([T, nH * hd]), dk = empty([T, nKV * hd]), dv = empty([T, nKV * hd]);
    const fwd = await timeIt(
      gpu,
      (rec) => attentionForward(rec, { out: o, lse, q, k, v }, shape),
      small ? 2 : 5,
      3,
    );
    const bwd = await timeIt(
      gpu,
      (rec) => attentionBackward(rec, { dq, dk, dv, dout, q, k, v, out: o, lse, delta }, shape),
      small ? 2 : 5,
      3,
    );
    // Causal attention: about 2·2·S²·hd/2 multiply-adds per head and sequence forward.
    const attFlop = 2 * B * nH * S * S * hd;
    const label = `B${B} S${S} nH${nH} nKV${nKV} hd${hd}`;
    report({ name: `attention forward ${label}`, value: fwd, unit: "ms" });
    report({ name: `attention forward ${label}`, value: attFlop / fwd / 1e9, unit: "TFLOP/s" });
    report({ name: `attention backward ${label}`, value: bwd, unit: "ms" });
    release();
    // Cross-entropy loss + gradient at a real vocabulary.
    let [Tc, V] = small ? [64, 32000] : [2048, 128256];
    if (Tc * V * 4 > limit) [Tc, V] = [Math.floor(limit / 4 / 32000 / 2), 32000];
    const logits = rand([Tc, V], 2), dl = empty([Tc, V]), losses = empty([Tc]), loss = empty([1]);
    const targets = keep(gpu.upload(Int32Array.from({ length: Tc }, () => rng.int(V))));
    const weights = keep(gpu.upload(new Float32Array(Tc).fill(1 / Tc)));
    const ce = await timeIt(
      gpu,
      (rec) => crossEntropy(rec, { logits, targets, weights, losses, loss, dlogits: dl }),
      small ? 2 : 5,
      3,
    );
    report({ name: `cross-entropy loss+grad ${Tc}x${V}`, value: ce, unit: "ms" });
    report({
      name: `cross-entropy loss+grad ${Tc}x${V}`,
      value: (Tc * V * 4 * 3) / ce / 1e6,
      unit: "GB/s",
    });
    release();
  } finally {
    release();
    gpu.close();
  }
}

/** f32 → f16 bits, rounded to nearest even (via gpu/half.ts). */
function f32ToF16(x: number): number {
  F32[0] = x;
  return f32BitsToF16(U32[0]);
}
const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

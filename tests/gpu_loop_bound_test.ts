// The per-invocation loop limit: what the driver does (lavapipe stops an invocation's loops after
// 65,535 passes, silently), that every kernel with loops declares its bound, and that the
// recorder refuses a dispatch over MAX_INVOCATION_LOOP with KernelLoopBoundError, naming the
// kernel, its parameters and the limit, before anything runs.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError, KernelLoopBoundError } from "../gpu/errors.ts";
import { defineKernel, hasLoop, MAX_INVOCATION_LOOP } from "../gpu/kernel.ts";
import {
  attentionBackward,
  attentionForward,
  attentionLoopPasses,
} from "../gpu/kernels/attention.ts";
import { crossEntropy } from "../gpu/kernels/cross_entropy.ts";
import { embeddingBackward, EmbeddingGradPlan } from "../gpu/kernels/embedding.ts";
import { matmulNT } from "../gpu/kernels/matmul.ts";

// Counts the passes of two loops in a row; its loopBound is understated on purpose (0), so that
// the dispatch reaches the driver and the test sees what the driver does with long loops.
const TWO_LOOPS = defineKernel({
  name: "test_two_loops",
  params: { a: "u32", b: "u32" },
  bindings: { out: "read_write f32" },
  loopBound: () => 0,
  body: /* wgsl */ `
@compute @workgroup_size(1)
fn main() {
  var c = 0u;
  for (var i = 0u; i < p.a; i++) { c += 1u; }
  var d = 0u;
  for (var i = 0u; i < p.b; i++) { d += 1u; }
  out[0] = f32(c);
  out[1] = f32(d);
}
`,
});

// A declared bound of n + 1 passes (one loop of n iterations).
const ONE_LOOP = defineKernel({
  name: "test_one_loop",
  params: { n: "u32" },
  bindings: { out: "read_write f32" },
  loopBound: ({ n }) => n + 1,
  body: /* wgsl */ `
@compute @workgroup_size(1)
fn main() {
  var c = 0u;
  for (var i = 0u; i < p.n; i++) { c += 1u; }
  out[0] = f32(c);
}
`,
});

Deno.test("gpu loop bound: the driver's limit on one invocation's loops", async () => {
  const gpu = await Gpu.open();
  try {
    const lavapipe = gpu.info.isCpu && /llvmpipe/i.test(gpu.info.description);
    const out = gpu.tensor([2]);
    const count = async (a: number, b: number) =>
      Array.from(
        (await gpu.run(
          (rec) => rec.dispatch(TWO_LOOPS, { bindings: { out }, params: { a, b }, grid: [1] }),
          [out],
        ))[0],
      );
    // Within the limit every device runs every iteration.
    assert.deepEqual(await count(60000, 0), [60000, 0]);
    // One loop of 70,000: lavapipe stops it at 65,535 without any error; a GPU runs it all.
    assert.deepEqual(await count(70000, 0), [lavapipe ? 65535 : 70000, 0]);
    // The limit is per invocation across all its loops, and a loop of n iterations costs n + 1
    // passes (the pass that ends it too): 30,000 + 1 + 35,534 = 65,535 is the most that fits.
    assert.deepEqual(await count(30000, 35534), [30000, 35534]);
    assert.deepEqual(await count(30000, 35535), [30000, lavapipe ? 35534 : 35535]);
    // The largest loop the recorder accepts (declared n + 1 = 65,535 passes) runs in full.
    const [one] = await gpu.run(
      (rec) => rec.dispatch(ONE_LOOP, { bindings: { out }, params: { n: 65534 }, grid: [1] }),
      [out],
    );
    assert.equal(one[0], 65534);
    console.log(`${gpu.info.description}: loop limit ${lavapipe ? 65535 : "none seen"}`);
    gpu.release(out);
  } finally {
    gpu.close();
  }
});

Deno.test("gpu loop bound: a kernel with a loop must declare its bound", () => {
  const decl = {
    name: "test_decl",
    params: { n: "u32" },
    bindings: { out: "read_write f32" },
    body: "@compute @workgroup_size(1) fn main() { for (var i = 0u; i < p.n; i++) { } }",
  } as const;
  assert.throws(() => defineKernel(decl), /loopBound/);
  assert.doesNotThrow(() => defineKernel({ ...decl, loopBound: ({ n }) => n + 1 }));
  assert.ok(hasLoop("loop { break; }") && hasLoop("while (x < 3) { }"));
  // Words in comments are not loops.
  assert.ok(!hasLoop("// for each row\n/* loop over\n while */ fn main() { y[0] = 1.0; }"));
  assert.ok(!hasLoop("let before = 1; let format = 2;"));
});

Deno.test("gpu loop bound: the recorder refuses a dispatch over the bound", async () => {
  const gpu = await Gpu.open();
  try {
    const out = gpu.tensor([1]);
    const rec = gpu.record();
    const refused = (f: () => void, kernel: string | RegExp) =>
      assert.throws(f, (e: unknown) => {
        assert.ok(e instanceof KernelLoopBoundError, String(e));
        assert.ok(e instanceof GpuShapeError);
        assert.match(e.kernel, typeof kernel === "string" ? new RegExp(`^${kernel}$`) : kernel);
        assert.equal(e.limit, MAX_INVOCATION_LOOP);
        assert.ok(e.bound > MAX_INVOCATION_LOOP);
        assert.match(e.message, new RegExp(`${e.bound}.*65535`));
        return true;
      });
    try {
      // The declared bound n + 1 against the limit: 65,534 passes, 65,535 is refused.
      rec.dispatch(ONE_LOOP, { bindings: { out }, params: { n: 65534 }, grid: [1] });
      refused(
        () => rec.dispatch(ONE_LOOP, { bindings: { out }, params: { n: 65535 }, grid: [1] }),
        "test_one_loop",
      );
      assert.throws(
        () => rec.dispatch(ONE_LOOP, { bindings: { out }, params: { n: 65535 }, grid: [1] }),
        /test_one_loop: with n = 65535 one invocation would run up to 65536 loop passes/,
      );
      assert.equal(rec.dispatches, 1, "a refused dispatch records nothing");

      // Cross-entropy: 3·(⌈V/256⌉ + 1) passes, so V = 5,592,064 is the largest vocabulary.
      const ce = (V: number) => {
        const L = gpu.tensor([1, V]);
        try {
          crossEntropy(rec, {
            logits: L,
            targets: gpu.tensor([1], "i32"),
            weights: gpu.tensor([1]),
            losses: gpu.tensor([1]),
            dlogits: L,
          });
        } finally {
          gpu.release(L);
        }
      };
      ce(5_592_064);
      refused(() => ce(5_592_065), "cross_entropy");

      // Matmul with K not a multiple of 4: a k loop of K iterations, K + 1 passes.
      const C = gpu.tensor([2, 3]);
      const mm = (K: number, variant: "register" | "tiled") =>
        matmulNT(rec, C, gpu.tensor([2, K]), gpu.tensor([3, K]), { variant });
      mm(65534, "register");
      refused(() => mm(65535, "register"), /^matmul_register_/);
      // The tiled kernel (the default 64x64x16 shape): ⌈K/16⌉ + 1 passes.
      mm(1_048_544, "tiled");
      refused(() => mm(1_048_545, "tiled"), /^matmul_tiled_64x64x16_4x4_/);

      // Attention: sequences of 4096 and 8192 fit with 8 query heads per KV head (the dK/dV
      // kernel runs 8·(⌈S/4⌉ + 1) + 9 passes: 16,401 at 8192); 16,384 with 16 query heads per
      // KV head is refused there (16·4097 + 17), while the forward (2·16,385) still fits.
      for (const [S, g, ok] of [[4096, 8, true], [8192, 8, true], [16384, 16, false]] as const) {
        const shape = { batch: 1, seqLen: S, nHeads: g, nKvHeads: 1, headDim: 2 };
        const st = gpu.tensor([S, g]);
        const t = {
          dq: gpu.tensor([S, 2 * g]),
          dk: gpu.tensor([S, 2]),
          dv: gpu.tensor([S, 2]),
          dout: gpu.tensor([S, 2 * g]),
          q: gpu.tensor([S, 2 * g]),
          k: gpu.tensor([S, 2]),
          v: gpu.tensor([S, 2]),
          out: gpu.tensor([S, 2 * g]),
          lse: st,
          delta: gpu.tensor([S, g]),
        };
        const passes = attentionLoopPasses(shape);
        assert.equal(passes.dkv <= MAX_INVOCATION_LOOP, ok);
        assert.ok(passes.forward <= MAX_INVOCATION_LOOP && passes.dq <= MAX_INVOCATION_LOOP);
        attentionForward(rec, { out: t.out, lse: t.lse, q: t.q, k: t.k, v: t.v }, shape);
        if (ok) attentionBackward(rec, t, shape);
        else refused(() => attentionBackward(rec, t, shape), "attention_backward_dkv_hd2");
      }

      // Embedding backward: one token 65,535 times is over the bound (65,536 passes).
      const T = 65535;
      const plan = new EmbeddingGradPlan(gpu, T, 4);
      plan.set(new Int32Array(T).fill(3));
      refused(
        () => embeddingBackward(rec, gpu.tensor([4, 1]), gpu.tensor([T, 1]), plan, true),
        "embedding_backward",
      );
      plan.set(new Int32Array(T).map((_, i) => i % 2));
      embeddingBackward(rec, gpu.tensor([4, 1]), gpu.tensor([T, 1]), plan, true);
    } finally {
      rec.discard();
    }
  } finally {
    gpu.close();
  }
});

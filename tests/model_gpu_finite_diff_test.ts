// Finite differences of the GPU model's own f32 loss (no reference involved): for several
// tensors (embeddings, norms, linears, lm_head, adapter factors with σ = s) the central
// difference along the gradient direction, and at the tensor's largest gradient entry, must
// agree with the backward pass. The perturbation actually applied is the f32-rounded one, so
// rounding the perturbed weights does not pollute the comparison.
import assert from "node:assert/strict";
import { Gpu, type GpuTensor } from "../gpu/mod.ts";
import { LINEAR_KINDS } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import {
  gpuStep,
  GQA_UNTIED,
  randomAdapterFactors,
  randomMicroBatch,
  randomWeights,
  Rng,
} from "./support/model_gpu.ts";

Deno.test("gpu model gradients match finite differences of its f32 loss", async () => {
  const config = GQA_UNTIED;
  const rng = new Rng(21);
  const weights = randomWeights(config, rng);
  const S = 10;
  const batches = [randomMicroBatch(config, rng, 2, S), randomMicroBatch(config, rng, 2, S)];
  const rank = 2;
  const s = 0.8;
  const factors = randomAdapterFactors(config, rank, rng);
  const gpu = await Gpu.open();
  const model = await LlamaGpu.create(gpu, config, weights, {
    maxRows: 2,
    seqLen: S,
    maxMicroBatches: 2,
    adapters: { targets: LINEAR_KINDS, rank },
    gradients: "weights",
  });
  try {
    for (const [n, f] of factors) model.writeAdapter(n, f.A, f.B);
    model.setAdapterScales(s, s); // σ = s: g_A, g_B are the true gradients
    const grads = await gpuStep(model, batches);

    const loss = async (): Promise<number> => {
      const rec = gpu.record({ label: "fd loss" });
      model.recordForward(rec);
      const p = rec.read(model.loss);
      await rec.submit();
      return (await p)[0];
    };
    const base = await loss();
    assert.ok(Math.abs(base - grads.loss) <= 1e-6 * base, "forward-only loss = step loss");

    const l0 = "model.layers.0";
    const l1 = "model.layers.1";
    const cases: { name: string; tensor: GpuTensor; data: Float32Array; grad: Float32Array }[] = [
      "model.embed_tokens.weight",
      `${l0}.input_layernorm.weight`,
      `${l0}.self_attn.q_proj.weight`,
      `${l0}.self_attn.k_proj.weight`,
      `${l1}.post_attention_layernorm.weight`,
      `${l1}.mlp.down_proj.weight`,
      "model.norm.weight",
      "lm_head.weight",
    ].map((name) => ({
      name,
      tensor: model.weight(name),
      data: weights.get(name)!.data,
      grad: grads.gradW.get(name)!,
    }));
    for (const name of [`${l0}.self_attn.v_proj.weight`, `${l1}.mlp.up_proj.weight`]) {
      const f = factors.get(name)!;
      const a = model.adapter(name);
      cases.push({ name: `A ${name}`, tensor: a.A, data: f.A, grad: grads.gradA.get(name)! });
      cases.push({ name: `B ${name}`, tensor: a.B, data: f.B, grad: grads.gradB.get(name)! });
    }

    /**
     * (L(w + δ⁺) − L(w − δ⁻)) against Σ g·(δ⁺ + δ⁻), where δ± are the f32-rounded steps of
     * ±h·dir actually taken.
     */
    const check = async (
      c: (typeof cases)[0],
      dir: Float64Array,
      h: number,
    ): Promise<number> => {
      const up = new Float32Array(c.data.length);
      const down = new Float32Array(c.data.length);
      let predicted = 0;
      for (let i = 0; i < dir.length; i++) {
        up[i] = c.data[i] + h * dir[i];
        down[i] = c.data[i] - h * dir[i];
        predicted += c.grad[i] * ((up[i] - c.data[i]) - (down[i] - c.data[i]));
      }
      gpu.write(c.tensor, up);
      const lUp = await loss();
      gpu.write(c.tensor, down);
      const lDown = await loss();
      gpu.write(c.tensor, c.data);
      return Math.abs((lUp - lDown) - predicted) / Math.abs(predicted);
    };

    let worstDir = 0;
    let worstEntry = 0;
    for (const c of cases) {
      let norm = 0;
      let top = 0;
      for (let i = 0; i < c.grad.length; i++) {
        norm += c.grad[i] ** 2;
        if (Math.abs(c.grad[i]) > Math.abs(c.grad[top])) top = i;
      }
      norm = Math.sqrt(norm);
      assert.ok(norm > 0, `${c.name}: zero gradient`);
      // Steps sized so that the loss moves by ~6e-3 (f32 noise in the loss is ~1e-7).
      const dir = Float64Array.from(c.grad, (g) => g / norm);
      const eDir = await check(c, dir, 3e-3 / norm);
      const one = new Float64Array(c.grad.length);
      one[top] = 1;
      const eOne = await check(c, one, 3e-3 / Math.abs(c.grad[top]));
      console.log(
        `fd ${c.name}: along the gradient ${eDir.toExponential(2)}, ` +
          `entry ${top} ${eOne.toExponential(2)}`,
      );
      worstDir = Math.max(worstDir, eDir);
      worstEntry = Math.max(worstEntry, eOne);
    }
    assert.ok(worstDir < 1e-3, `directional finite differences off by ${worstDir}`);
    assert.ok(worstEntry < 1e-3, `single-entry finite differences off by ${worstEntry}`);
  } finally {
    model.close();
    gpu.close();
  }
});

import assert from "node:assert/strict";
import { adaptableLinears, expectedTensors, type LlamaConfig } from "../model/config.ts";
import { loadModelFolder, readSafetensors } from "../model/safetensors.ts";
import {
  type ReferenceAdapter,
  type ReferenceBatch,
  referenceForward,
  referenceForwardBackward,
  referenceGreedy,
  ReferenceInputError,
  type ReferenceTensor,
} from "../model/reference/llama.ts";
import { Rng } from "../core/rng.ts";
import {
  FIXTURE_NAMES,
  LLAMA_TINY as FIXTURE,
  requireFixture,
  requireLlamaTiny,
} from "./support/fixture.ts";

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** The distance between two adjacent f32 values around |f| (f an f32). */
function f32Ulp(f: number): number {
  const bits = new Uint32Array(new Float32Array([Math.abs(f)]).buffer);
  const next = new Float32Array(new Uint32Array([bits[0] + 1]).buffer)[0];
  return next - Math.abs(f);
}

/**
 * The largest |ours − stored| in units of the stored f32's ulp. The fixture is PyTorch float64
 * rounded to f32, so a float64 result that agrees with it to ~1e-12 lands within half an ulp.
 */
function worstUlps(ours: ArrayLike<number>, stored: ArrayLike<number>): number {
  let scale = 0;
  for (let i = 0; i < stored.length; i++) scale = Math.max(scale, Math.abs(stored[i]));
  let worst = 0;
  for (let i = 0; i < stored.length; i++) {
    const slack = 1e-12 * Math.abs(stored[i]) + 1e-13 * scale;
    const err = Math.max(0, Math.abs(ours[i] - stored[i]) - slack) / f32Ulp(stored[i]);
    worst = Math.max(worst, err);
  }
  return worst;
}

/** Each fixture's config with its distinguishing features switched off, one at a time. */
function withoutFeatures(config: LlamaConfig): [string, LlamaConfig][] {
  const out: [string, LlamaConfig][] = [];
  if (config.rope_scaling) {
    const { rope_scaling: _, ...c } = config;
    out.push([`no rope_scaling ${config.rope_scaling.rope_type}`, c]);
  }
  if (config.sliding_window !== undefined) {
    const { sliding_window: _, ...c } = config;
    out.push(["no sliding window", c]);
  }
  if (config.attention_bias || config.mlp_bias || config.model_type === "qwen2") {
    const { attention_bias: _a, mlp_bias: _m, model_type: _t, ...c } = config;
    out.push(["no biases", c]);
  }
  return out;
}

Deno.test("reference matches every PyTorch fixture: loss, logits, grad_W, adapter gradients", async (t) => {
  for (const name of FIXTURE_NAMES) {
    await t.step(name, async () => {
      const dir = await requireFixture(name);
      const { config, tensors } = await loadModelFolder(dir);
      const expected = (await readSafetensors(new URL("expected.safetensors", dir))).tensors;
      const meta = JSON.parse(await Deno.readTextFile(new URL("expected.json", dir)));
      const batch: ReferenceBatch = { ids: meta.input_ids, targetMask: meta.loss_mask };
      const r = meta.adapter.r as number;
      const get = (n: string) => {
        const x = expected.get(n);
        assert.ok(x, `${name}: expected.safetensors lacks ${n}`);
        return x.data;
      };
      const names: string[] = meta.grad_W_tensors;
      assert.deepEqual(
        [...names].sort(),
        expectedTensors(config).map((s) => s.name).sort(),
        "the fixture's tensors are the ones the config implies",
      );

      for (const [suffix, s] of [["", 1], ["_alpha2r", 2]] as const) {
        const adapters = new Map<string, ReferenceAdapter>();
        for (const lin of adaptableLinears(config)) {
          adapters.set(lin.name, {
            A: get(`${lin.name}.A${suffix}`),
            B: get(`${lin.name}.B${suffix}`),
            rank: r,
            scale: s,
            sigma: 0,
          });
        }
        const res = referenceForwardBackward(config, tensors, batch, { adapters });
        const errs: Record<string, number> = {};
        errs.loss_ulps = worstUlps([res.loss], get("loss"));
        errs.logits_ulps = worstUlps(res.logits, get("logits"));
        errs.logits_rel = relErr(res.logits, get("logits"));
        let gA = 0;
        let gB = 0;
        let gW = 0;
        let gWrel = 0;
        for (const lin of adaptableLinears(config)) {
          gA = Math.max(
            gA,
            worstUlps(res.gradA.get(lin.name)!, get(`${lin.name}.grad_A${suffix}`)),
          );
          gB = Math.max(
            gB,
            worstUlps(res.gradB.get(lin.name)!, get(`${lin.name}.grad_B${suffix}`)),
          );
        }
        if (suffix === "") {
          for (const n of names) {
            gW = Math.max(gW, worstUlps(res.gradW.get(n)!, get(`${n}.grad_W`)));
            gWrel = Math.max(gWrel, relErr(res.gradW.get(n)!, get(`${n}.grad_W`)));
          }
          errs.grad_W_ulps = gW;
          errs.grad_W_rel = gWrel;
        }
        errs.grad_A_ulps = gA;
        errs.grad_B_ulps = gB;
        console.log(`${name} s=${s}:`, JSON.stringify(errs));
        // Our float64 loss, logits and gradients round to exactly the fixture's f32 values (the
        // fixture's adapter gradients are computed from exactly the stored f32 A and B).
        assert.ok(errs.loss_ulps <= 0.5, `loss off by ${errs.loss_ulps} ulp`);
        assert.ok(errs.logits_ulps <= 0.5, `logits off by ${errs.logits_ulps} ulp`);
        if (suffix === "") assert.ok(gW <= 0.5, `grad_W off by ${gW} ulp`);
        assert.ok(gA <= 0.5, `grad_A off by ${gA} ulp`);
        assert.ok(gB <= 0.5, `grad_B off by ${gB} ulp`);
      }

      // Each feature matters: without it the logits are far from the fixture's.
      for (const [what, c] of withoutFeatures(config)) {
        const off = referenceForward(c, tensors, batch).logits;
        const e = relErr(off, get("logits"));
        console.log(`${name} ${what}: logits rel ${e.toExponential(2)}`);
        assert.ok(e > 1e-3, `${name}: ${what} leaves the logits within ${e}`);
      }
    });
  }
});

Deno.test("reference greedy decoding picks the fixture's argmax first", async () => {
  await requireLlamaTiny();
  const { config, tensors } = await loadModelFolder(FIXTURE);
  const expected = (await readSafetensors(new URL("expected.safetensors", FIXTURE))).tensors;
  const meta = JSON.parse(await Deno.readTextFile(new URL("expected.json", FIXTURE)));
  const logits = expected.get("logits")!.data;
  const [, S, V] = expected.get("logits")!.shape;
  const ids = meta.input_ids[1] as number[];
  const row = (1 * S + S - 1) * V;
  let best = 0;
  for (let v = 1; v < V; v++) if (logits[row + v] > logits[row + best]) best = v;
  const out = referenceGreedy(config, tensors, ids, 3, []);
  assert.equal(out.length, 3);
  assert.equal(out[0], best);
  // Each later token is the argmax after appending the previous ones.
  const again = referenceGreedy(config, tensors, [...ids, out[0]], 2, []);
  assert.deepEqual(again, out.slice(1));
  // A stop id ends decoding and is returned.
  assert.deepEqual(referenceGreedy(config, tensors, ids, 5, [best]), [best]);
});

// ---------------------------------------------------------------------------------------------
// Fresh random tiny models: finite differences of every kind of gradient.

function randomModel(config: LlamaConfig, rng: Rng): Map<string, ReferenceTensor> {
  const w = new Map<string, ReferenceTensor>();
  for (const spec of expectedTensors(config)) {
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const data = new Float64Array(n);
    const isNorm = spec.shape.length === 1;
    const fanIn = spec.shape[spec.shape.length - 1];
    for (let i = 0; i < n; i++) {
      data[i] = isNorm ? 1 + 0.2 * rng.normal() : rng.normal() * (1.2 / Math.sqrt(fanIn));
    }
    w.set(spec.name, { shape: spec.shape, data });
  }
  return w;
}

function randomBatch(config: LlamaConfig, rng: Rng, B: number, S: number): ReferenceBatch {
  const ids: number[][] = [];
  const targetMask: number[][] = [];
  for (let b = 0; b < B; b++) {
    ids.push(Array.from({ length: S }, () => rng.int(config.vocab_size)));
    const start = 1 + rng.int(S - 2);
    targetMask.push(Array.from({ length: S }, (_, j) => (j >= start ? 1 : 0)));
  }
  targetMask[B - 1][S - 1] = 0; // a padded tail position
  return { ids, targetMask };
}

function randomAdapters(
  config: LlamaConfig,
  rng: Rng,
  rank: number,
  scale: number,
  sigma: number,
): Map<string, ReferenceAdapter> {
  const adapters = new Map<string, ReferenceAdapter>();
  for (const lin of adaptableLinears(config)) {
    const A = Float64Array.from({ length: rank * lin.in }, () => rng.normal() * 0.3);
    const B = Float64Array.from({ length: lin.out * rank }, () => rng.normal() * 0.3);
    adapters.set(lin.name, { A, B, rank, scale, sigma });
  }
  return adapters;
}

const GQA_TIED: LlamaConfig = {
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 23,
  rms_norm_eps: 1e-5,
  rope_theta: 500,
  max_position_embeddings: 16,
  tie_word_embeddings: true,
  bos_token_id: 1,
  eos_token_id: 2,
  pad_token_id: 0,
};

/** Untied, multi-query (one key/value head) and a head_dim that is not hidden / heads. */
const MQA_UNTIED: LlamaConfig = {
  ...GQA_TIED,
  num_hidden_layers: 1,
  num_attention_heads: 3,
  num_key_value_heads: 1,
  head_dim: 6,
  tie_word_embeddings: false,
};

/** Central difference of the loss along one entry of `data`, in float64. */
/**
 * Every LLaMA bias, llama3 RoPE scaling and a sliding window of 3 (a combination no family has,
 * to check the gradients through all of them at once).
 */
const BIASED_WINDOWED: LlamaConfig = {
  ...GQA_TIED,
  tie_word_embeddings: false,
  attention_bias: true,
  mlp_bias: true,
  rope_scaling: {
    rope_type: "llama3",
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 64,
  },
  sliding_window: 3,
};

function centralDiff(
  data: Float64Array,
  i: number,
  loss: () => number,
  h = 1e-5,
): number {
  const keep = data[i];
  data[i] = keep + h;
  const up = loss();
  data[i] = keep - h;
  const down = loss();
  data[i] = keep;
  return (up - down) / (2 * h);
}

function assertClose(actual: number, expected: number, what: string, tol = 1e-6): void {
  const err = Math.abs(actual - expected) / Math.max(Math.abs(expected), 1e-4);
  assert.ok(err < tol, `${what}: analytic ${actual}, finite difference ${expected} (rel ${err})`);
}

function pickIndices(rng: Rng, n: number, count: number): number[] {
  return Array.from({ length: count }, () => rng.int(n));
}

for (
  const [label, config] of [
    ["GQA, tied", GQA_TIED],
    ["MQA, untied, head_dim 6", MQA_UNTIED],
    ["biases, llama3 RoPE, sliding window", BIASED_WINDOWED],
  ] as const
) {
  Deno.test(`reference gradients match finite differences (${label})`, () => {
    const rng = new Rng(label.length * 7919);
    const weights = randomModel(config, rng);
    const batch = randomBatch(config, rng, 2, 7);
    const rank = 2;
    const s = 1.5;
    // σ = s: the adapter is really in the forward and g_A, g_B are its true gradients.
    const adapters = randomAdapters(config, rng, rank, s, s);
    const res = referenceForwardBackward(config, weights, batch, { adapters });
    const loss = () => referenceForward(config, weights, batch, { adapters }).loss;
    assert.ok(res.targets > 0 && Number.isFinite(res.loss));

    const names = [
      "model.embed_tokens.weight",
      "model.layers.0.input_layernorm.weight",
      "model.layers.0.post_attention_layernorm.weight",
      "model.norm.weight",
      ...adaptableLinears(config).map((l) => l.name),
      ...expectedTensors(config).map((t) => t.name).filter((n) => n.endsWith(".bias")),
    ];
    if (!config.tie_word_embeddings) names.push("lm_head.weight");
    for (const name of names) {
      const data = weights.get(name)!.data as Float64Array;
      for (const i of pickIndices(rng, data.length, 2)) {
        assertClose(res.gradW.get(name)![i], centralDiff(data, i, loss), `grad_W ${name}[${i}]`);
      }
    }
    // A whole embedding row of a token that occurs in the batch (through both the embedding and,
    // when tied, the output layer).
    const tok = batch.ids[0][3];
    const E = weights.get("model.embed_tokens.weight")!.data as Float64Array;
    for (let c = 0; c < config.hidden_size; c++) {
      const i = tok * config.hidden_size + c;
      assertClose(
        res.gradW.get("model.embed_tokens.weight")![i],
        centralDiff(E, i, loss),
        `E[${tok}][${c}]`,
      );
    }
    for (const lin of adaptableLinears(config)) {
      const ad = adapters.get(lin.name)!;
      for (const i of pickIndices(rng, ad.A.length, 2)) {
        assertClose(
          res.gradA.get(lin.name)![i],
          centralDiff(ad.A as Float64Array, i, loss),
          `g_A ${lin.name}[${i}]`,
        );
      }
      for (const i of pickIndices(rng, ad.B.length, 2)) {
        assertClose(
          res.gradB.get(lin.name)![i],
          centralDiff(ad.B as Float64Array, i, loss),
          `g_B ${lin.name}[${i}]`,
        );
      }
    }
  });
}

Deno.test("reference: numeric mute γ gives the true adapter gradients divided by γ", () => {
  const rng = new Rng(4242);
  const config = GQA_TIED;
  const weights = randomModel(config, rng);
  const batch = randomBatch(config, rng, 2, 6);
  const s = 2;
  const gamma = 0.25;
  const adapters = randomAdapters(config, rng, 3, s, gamma * s);
  const res = referenceForwardBackward(config, weights, batch, { adapters });
  const loss = () => referenceForward(config, weights, batch, { adapters }).loss;
  for (
    const name of ["model.layers.0.self_attn.v_proj.weight", "model.layers.1.mlp.down_proj.weight"]
  ) {
    const ad = adapters.get(name)!;
    for (const i of pickIndices(rng, ad.A.length, 3)) {
      assertClose(
        res.gradA.get(name)![i],
        centralDiff(ad.A as Float64Array, i, loss) / gamma,
        `g_A ${name}[${i}]`,
      );
    }
    for (const i of pickIndices(rng, ad.B.length, 3)) {
      assertClose(
        res.gradB.get(name)![i],
        centralDiff(ad.B as Float64Array, i, loss) / gamma,
        `g_B ${name}[${i}]`,
      );
    }
  }
});

Deno.test("reference: the exact mute is the γ → 0 limit and g_A = s·Bᵀ G_W, g_B = s·G_W Aᵀ", () => {
  const rng = new Rng(99);
  const config = MQA_UNTIED;
  const weights = randomModel(config, rng);
  const batch = randomBatch(config, rng, 3, 6);
  const s = 0.5;
  const exact = randomAdapters(config, rng, 2, s, 0);
  const plain = referenceForwardBackward(config, weights, batch);
  const muted = referenceForwardBackward(config, weights, batch, { adapters: exact });
  // The exact mute leaves the forward, and every weight gradient, as without adapters.
  assert.equal(muted.loss, plain.loss);
  for (const [name, g] of plain.gradW) assert.deepEqual(muted.gradW.get(name), g);

  const gamma = 1e-9;
  const tiny = new Map([...exact].map(([n, a]) => [n, { ...a, sigma: gamma * s }]));
  const limit = referenceForwardBackward(config, weights, batch, { adapters: tiny });
  for (const lin of adaptableLinears(config)) {
    const ad = exact.get(lin.name)!;
    const gW = plain.gradW.get(lin.name)!;
    const r = ad.rank;
    // With dY from the plain forward, G_W = dYᵀx, so (dY B)ᵀ x = Bᵀ G_W and dYᵀ (x Aᵀ) = G_W Aᵀ.
    const wantA = new Float64Array(r * lin.in);
    const wantB = new Float64Array(lin.out * r);
    for (let j = 0; j < r; j++) {
      for (let i = 0; i < lin.in; i++) {
        let acc = 0;
        for (let o = 0; o < lin.out; o++) acc += ad.B[o * r + j] * gW[o * lin.in + i];
        wantA[j * lin.in + i] = s * acc;
      }
    }
    for (let o = 0; o < lin.out; o++) {
      for (let j = 0; j < r; j++) {
        let acc = 0;
        for (let i = 0; i < lin.in; i++) acc += gW[o * lin.in + i] * ad.A[j * lin.in + i];
        wantB[o * r + j] = s * acc;
      }
    }
    assert.ok(relErr(muted.gradA.get(lin.name)!, wantA) < 1e-12, `g_A identity ${lin.name}`);
    assert.ok(relErr(muted.gradB.get(lin.name)!, wantB) < 1e-12, `g_B identity ${lin.name}`);
    assert.ok(relErr(limit.gradA.get(lin.name)!, wantA) < 1e-6, `γ→0 g_A ${lin.name}`);
    assert.ok(relErr(limit.gradB.get(lin.name)!, wantB) < 1e-6, `γ→0 g_B ${lin.name}`);
  }
});

Deno.test("reference: only target tokens count, causality holds, no targets gives zeros", () => {
  const rng = new Rng(7);
  const config = GQA_TIED;
  const weights = randomModel(config, rng);
  const batch = randomBatch(config, rng, 2, 6);
  const base = referenceForward(config, weights, batch);
  // Changing a token after the last target of a row changes neither the loss nor earlier logits.
  const ids = batch.ids.map((r) => [...r]);
  ids[1][5] = (ids[1][5] + 1) % config.vocab_size; // row 1's last position is not a target
  const changed = referenceForward(config, weights, { ids, targetMask: batch.targetMask });
  assert.equal(changed.loss, base.loss);
  const V = config.vocab_size;
  const S = 6;
  for (let i = 0; i < (S + 5) * V; i++) assert.equal(changed.logits[i], base.logits[i]);
  assert.notDeepEqual(changed.logits.slice((S + 5) * V), base.logits.slice((S + 5) * V));

  const none = referenceForwardBackward(config, weights, {
    ids: batch.ids,
    targetMask: batch.ids.map((r) => r.map(() => 0)),
  });
  assert.equal(none.loss, 0);
  assert.equal(none.targets, 0);
  for (const g of none.gradW.values()) assert.ok(g.every((x) => x === 0));
});

Deno.test("reference rejects bad input with ReferenceInputError", () => {
  const rng = new Rng(3);
  const config = GQA_TIED;
  const weights = randomModel(config, rng);
  const batch = randomBatch(config, rng, 1, 4);
  const missing = new Map(weights);
  missing.delete("model.layers.1.mlp.up_proj.weight");
  assert.throws(
    () => referenceForward(config, missing, batch),
    (e: unknown) => e instanceof ReferenceInputError && /up_proj/.test(e.message),
  );
  assert.throws(
    () => referenceForward(config, weights, { ids: [[1, 2, 99]], targetMask: [[0, 1, 1]] }),
    ReferenceInputError,
  );
  const bad = new Map([["model.layers.0.self_attn.q_proj.weight", {
    A: new Float64Array(5),
    B: new Float64Array(5),
    rank: 2,
    scale: 1,
    sigma: 0,
  }]]);
  assert.throws(
    () => referenceForward(config, weights, batch, { adapters: bad }),
    ReferenceInputError,
  );
});

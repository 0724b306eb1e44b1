// Real checkpoints' config.json (Llama 2, Llama 3.2, Mistral 7B v0.1, Qwen2.5 0.5B) parse with
// their tensors and parameter counts; every field is honoured, known to be harmless, or refused
// by name; RoPE scalings' inverse frequencies (f32 as transformers, float64 reference); configs
// that contradict the weights (in memory or in a model folder) are refused naming the field and
// the tensor.
import assert from "node:assert/strict";
import {
  checkConfigAgainstTensors,
  ConfigError,
  expectedTensors,
  type LlamaConfig,
  llamaConfigToJson,
  modelType,
  parameterCount,
  parseLlamaConfig,
  readLlamaConfig,
  writeLlamaConfig,
} from "../model/config.ts";
import { dynamicRopeEngaged, ropeInvFreq } from "../model/rope.ts";
import { referenceInvFreq } from "../model/reference/llama.ts";
import { loadModelFolder, writeSafetensors } from "../model/safetensors.ts";
import { FIXTURE_NAMES, requireFixture } from "./support/fixture.ts";
import { checkSameArchitecture } from "../train/export/export.ts";
import { AdapterModelMismatchError } from "../train/export/errors.ts";

const LLAMA2_7B = {
  _name_or_path: "meta-llama/Llama-2-7b-hf",
  architectures: ["LlamaForCausalLM"],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: "silu",
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 11008,
  max_position_embeddings: 4096,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 32,
  pretraining_tp: 1,
  rms_norm_eps: 1e-05,
  rope_scaling: null,
  tie_word_embeddings: false,
  torch_dtype: "float16",
  transformers_version: "4.31.0.dev0",
  use_cache: true,
  vocab_size: 32000,
};

const LLAMA32_1B_INSTRUCT = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  head_dim: 64,
  hidden_act: "silu",
  hidden_size: 2048,
  initializer_range: 0.02,
  intermediate_size: 8192,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 16,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-05,
  rope_scaling: {
    factor: 32.0,
    high_freq_factor: 4.0,
    low_freq_factor: 1.0,
    original_max_position_embeddings: 8192,
    rope_type: "llama3",
  },
  rope_theta: 500000.0,
  tie_word_embeddings: true,
  torch_dtype: "bfloat16",
  transformers_version: "4.45.0.dev0",
  use_cache: true,
  vocab_size: 128256,
};

const MISTRAL_7B = {
  architectures: ["MistralForCausalLM"],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: "silu",
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 32768,
  model_type: "mistral",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-05,
  rope_theta: 10000.0,
  sliding_window: 4096,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  transformers_version: "4.34.0.dev0",
  use_cache: true,
  vocab_size: 32000,
};

const QWEN25_05B = {
  architectures: ["Qwen2ForCausalLM"],
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151643,
  hidden_act: "silu",
  hidden_size: 896,
  initializer_range: 0.02,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  max_window_layers: 24,
  model_type: "qwen2",
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-06,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  torch_dtype: "bfloat16",
  transformers_version: "4.40.1",
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

function throwsField(json: unknown, field: string, pattern?: RegExp): void {
  assert.throws(
    () => parseLlamaConfig(json),
    (e: unknown) => {
      assert.ok(e instanceof ConfigError, `expected ConfigError, got ${e}`);
      assert.equal(e.field, field, e.message);
      assert.ok(e.message.includes(field.split(".").at(-1)!), `names the field: ${e.message}`);
      if (pattern) assert.match(e.message, pattern);
      return true;
    },
  );
}

Deno.test("config families: real configs parse, with their tensors and parameter counts", () => {
  const llama2 = parseLlamaConfig(LLAMA2_7B);
  assert.equal(modelType(llama2), "llama");
  assert.equal(llama2.rope_scaling, undefined);
  assert.equal(parameterCount(llama2), 6_738_415_616);

  const llama32 = parseLlamaConfig(LLAMA32_1B_INSTRUCT);
  assert.deepEqual(llama32.rope_scaling, {
    rope_type: "llama3",
    factor: 32,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 8192,
  });
  assert.deepEqual(llama32.eos_token_ids, [128001, 128008, 128009]);
  assert.equal(llama32.attention_bias, undefined);
  assert.equal(parameterCount(llama32), 1_235_814_400);

  const mistral = parseLlamaConfig(MISTRAL_7B);
  const asLlama = { ...MISTRAL_7B, model_type: "llama", architectures: ["LlamaForCausalLM"] };
  assert.throws(
    () =>
      checkSameArchitecture(
        parseLlamaConfig({ ...MISTRAL_7B, sliding_window: null }),
        parseLlamaConfig({ ...asLlama, sliding_window: undefined }),
      ),
    (e: unknown) => e instanceof AdapterModelMismatchError && e.field === "model_type",
  );
  assert.equal(modelType(mistral), "mistral");
  assert.equal(mistral.sliding_window, 4096);
  assert.equal(parameterCount(mistral), 7_241_732_096);
  assert.ok(!expectedTensors(mistral).some((t) => t.name.endsWith(".bias")));
  // MistralConfig's default window is 4096; null means none.
  const { sliding_window: _, ...noWindow } = MISTRAL_7B;
  assert.equal(parseLlamaConfig(noWindow).sliding_window, 4096);
  assert.equal(parseLlamaConfig({ ...MISTRAL_7B, sliding_window: null }).sliding_window, undefined);

  const qwen = parseLlamaConfig(QWEN25_05B);
  assert.equal(modelType(qwen), "qwen2");
  assert.equal(qwen.sliding_window, undefined, "use_sliding_window false: no window");
  assert.equal(parameterCount(qwen), 494_032_768);
  const biases = expectedTensors(qwen).filter((t) =>
    t.name.startsWith("model.layers.0.") &&
    t.name.endsWith(".bias")
  );
  assert.deepEqual(biases, [
    { name: "model.layers.0.self_attn.q_proj.bias", shape: [896] },
    { name: "model.layers.0.self_attn.k_proj.bias", shape: [128] },
    { name: "model.layers.0.self_attn.v_proj.bias", shape: [128] },
  ]);
  // Qwen2's defaults differ from LLaMA's.
  const { bos_token_id: _b, eos_token_id: _e, num_key_value_heads: _k, ...bare } = QWEN25_05B;
  const q2 = parseLlamaConfig({ ...bare, num_attention_heads: 32, hidden_size: 2048 });
  assert.deepEqual([q2.bos_token_id, q2.eos_token_id, q2.num_key_value_heads], [null, null, 32]);
});

Deno.test("config families: LLaMA biases follow their weights in the tensor list", () => {
  const c = parseLlamaConfig({
    hidden_size: 16,
    intermediate_size: 24,
    num_hidden_layers: 1,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 10,
    attention_bias: true,
    mlp_bias: true,
  });
  assert.deepEqual(
    expectedTensors(c).map((t) => `${t.name.replace("model.layers.0.", "")} ${t.shape}`),
    [
      "model.embed_tokens.weight 10,16",
      "input_layernorm.weight 16",
      "self_attn.q_proj.weight 16,16",
      "self_attn.q_proj.bias 16",
      "self_attn.k_proj.weight 8,16",
      "self_attn.k_proj.bias 8",
      "self_attn.v_proj.weight 8,16",
      "self_attn.v_proj.bias 8",
      "self_attn.o_proj.weight 16,16",
      "self_attn.o_proj.bias 16",
      "post_attention_layernorm.weight 16",
      "mlp.gate_proj.weight 24,16",
      "mlp.gate_proj.bias 24",
      "mlp.up_proj.weight 24,16",
      "mlp.up_proj.bias 24",
      "mlp.down_proj.weight 16,24",
      "mlp.down_proj.bias 16",
      "model.norm.weight 16",
      "lm_head.weight 10,16",
    ],
  );
  const attnOnly = parseLlamaConfig({ ...LLAMA2_7B, attention_bias: true });
  const names = expectedTensors(attnOnly).map((t) => t.name);
  assert.ok(names.includes("model.layers.31.self_attn.o_proj.bias"));
  assert.ok(!names.some((n) => n.includes("mlp") && n.endsWith(".bias")));
});

Deno.test("config families: write then read gives the same config and the right class", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/config.json`;
    for (
      const [json, arch] of [
        [LLAMA32_1B_INSTRUCT, "LlamaForCausalLM"],
        [{ ...LLAMA2_7B, attention_bias: true, mlp_bias: true }, "LlamaForCausalLM"],
        [MISTRAL_7B, "MistralForCausalLM"],
        [{ ...MISTRAL_7B, sliding_window: null }, "MistralForCausalLM"],
        [QWEN25_05B, "Qwen2ForCausalLM"],
        [{ ...LLAMA2_7B, rope_scaling: { type: "dynamic", factor: 2.0 } }, "LlamaForCausalLM"],
        [{ ...LLAMA2_7B, rope_scaling: { rope_type: "linear", factor: 4.0 } }, "LlamaForCausalLM"],
      ] as const
    ) {
      const c = parseLlamaConfig(json);
      await writeLlamaConfig(path, c);
      const raw = JSON.parse(await Deno.readTextFile(path));
      assert.deepEqual(raw.architectures, [arch]);
      assert.deepEqual(await readLlamaConfig(path), c);
      if (arch === "MistralForCausalLM") assert.ok("sliding_window" in raw, "written, null or not");
      if (arch === "Qwen2ForCausalLM") {
        assert.equal(raw.use_sliding_window, false);
        assert.ok(!("attention_bias" in raw));
      }
    }
    assert.deepEqual(
      llamaConfigToJson(parseLlamaConfig(LLAMA32_1B_INSTRUCT)).rope_scaling,
      LLAMA32_1B_INSTRUCT.rope_scaling,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config families: unknown or unsupported fields are refused by name", () => {
  throwsField({ ...LLAMA2_7B, qk_layernorm: true }, "qk_layernorm", /unknown field/);
  throwsField({ ...LLAMA2_7B, hidden_act: "gelu" }, "hidden_act");
  throwsField({ ...LLAMA2_7B, pretraining_tp: 2 }, "pretraining_tp");
  throwsField({ ...LLAMA2_7B, attention_dropout: 0.1 }, "attention_dropout", /dropout/);
  throwsField({ ...LLAMA2_7B, partial_rotary_factor: 0.5 }, "partial_rotary_factor");
  throwsField({ ...LLAMA2_7B, quantization_config: { bits: 4 } }, "quantization_config");
  throwsField({ ...LLAMA2_7B, sliding_window: 4096 }, "sliding_window", /mistral/);
  throwsField({ ...MISTRAL_7B, attention_bias: true }, "attention_bias", /llama/);
  throwsField({ ...QWEN25_05B, use_sliding_window: true }, "use_sliding_window");
  throwsField({ ...QWEN25_05B, model_type: "qwen2_moe" }, "model_type");
  throwsField({ ...QWEN25_05B, model_type: "llama" }, "model_type", /does not match/);
  throwsField({ ...LLAMA2_7B, architectures: ["LlamaForSequenceClassification"] }, "architectures");
  throwsField({ ...QWEN25_05B, layer_types: ["full_attention"] }, "layer_types");
  throwsField(
    { ...LLAMA2_7B, rope_scaling: { rope_type: "yarn", factor: 4.0 } },
    "rope_scaling.rope_type",
    /yarn/,
  );
  throwsField(
    { ...LLAMA2_7B, rope_scaling: { rope_type: "linear", factor: 4.0, beta_fast: 32 } },
    "rope_scaling.beta_fast",
  );
  throwsField(
    { ...LLAMA2_7B, rope_scaling: { rope_type: "linear", factor: 0 } },
    "rope_scaling.factor",
  );
  const { original_max_position_embeddings: _, ...noOriginal } = LLAMA32_1B_INSTRUCT.rope_scaling;
  throwsField(
    { ...LLAMA32_1B_INSTRUCT, rope_scaling: noOriginal },
    "rope_scaling.original_max_position_embeddings",
  );
  throwsField(
    {
      ...LLAMA32_1B_INSTRUCT,
      rope_scaling: { ...LLAMA32_1B_INSTRUCT.rope_scaling, high_freq_factor: 1.0 },
    },
    "rope_scaling.high_freq_factor",
  );
  throwsField(
    {
      ...LLAMA2_7B,
      rope_scaling: { rope_type: "dynamic", factor: 2, original_max_position_embeddings: 2048 },
    },
    "rope_scaling.original_max_position_embeddings",
  );
  throwsField(
    { ...LLAMA2_7B, rope_theta: 10000, rope_parameters: { rope_type: "default", rope_theta: 500 } },
    "rope_theta",
  );
  // Harmless fields at their one harmless value, and transformers 5's rope_parameters.
  const ok = parseLlamaConfig({
    ...LLAMA2_7B,
    attention_dropout: 0.0,
    partial_rotary_factor: 1.0,
    pruned_heads: {},
    temperature: 0.6,
    rope_parameters: { rope_type: "linear", factor: 2.0, rope_theta: 10000.0 },
  });
  assert.deepEqual(ok.rope_scaling, { rope_type: "linear", factor: 2 });
  assert.equal(ok.rope_theta, 10000);
  assert.equal(
    parseLlamaConfig({ ...QWEN25_05B, layer_types: Array(24).fill("full_attention") })
      .num_hidden_layers,
    24,
  );
});

Deno.test("config families: RoPE inverse frequencies, f32 as transformers and float64", () => {
  const check = (config: LlamaConfig, S: number) => {
    const f32 = ropeInvFreq(config, S);
    const f64 = referenceInvFreq(config, S);
    let worst = 0;
    for (let i = 0; i < f32.length; i++) worst = Math.max(worst, Math.abs(f32[i] / f64[i] - 1));
    assert.ok(worst < 1e-6, `f32 against float64: ${worst}`);
    return f64;
  };
  const llama32 = parseLlamaConfig(LLAMA32_1B_INSTRUCT);
  const plain = parseLlamaConfig({ ...LLAMA32_1B_INSTRUCT, rope_scaling: null });
  const scaled = check(llama32, 16);
  const base = check(plain, 16);
  // llama3 bands: wavelengths under 8192/4 kept, over 8192/1 divided by 32, smooth between.
  let kept = 0, divided = 0, smooth = 0;
  for (let i = 0; i < base.length; i++) {
    const wavelen = 2 * Math.PI / base[i];
    if (wavelen < 2048) {
      assert.equal(scaled[i], base[i]);
      kept++;
    } else if (wavelen > 8192) {
      assert.ok(Math.abs(scaled[i] * 32 / base[i] - 1) < 1e-15);
      divided++;
    } else {
      assert.ok(scaled[i] < base[i] && scaled[i] > base[i] / 32);
      smooth++;
    }
  }
  assert.ok(kept > 0 && divided > 0 && smooth > 0, `${kept} ${divided} ${smooth}`);

  const linear = parseLlamaConfig({ ...LLAMA2_7B, rope_scaling: { type: "linear", factor: 4.0 } });
  const lin = check(linear, 16);
  const plain2 = check(parseLlamaConfig(LLAMA2_7B), 16);
  lin.forEach((v, i) => assert.ok(Math.abs(v * 4 / plain2[i] - 1) < 1e-15));

  // Dynamic NTK: plain up to max_position_embeddings, a larger base past it.
  const dyn = parseLlamaConfig({ ...LLAMA2_7B, rope_scaling: { rope_type: "dynamic", factor: 2 } });
  assert.ok(!dynamicRopeEngaged(dyn, 4096) && dynamicRopeEngaged(dyn, 4097));
  assert.deepEqual(check(dyn, 4096), plain2);
  const long = check(dyn, 8192);
  const D = 128;
  const theta = 10000 * Math.pow(2 * 8192 / 4096 - 1, D / (D - 2));
  assert.ok(Math.abs(long[1] / Math.pow(theta, -2 / D) - 1) < 1e-12);
  assert.equal(long[0], 1);
});

Deno.test("config families: a checkpoint contradicting its config is refused naming both", () => {
  const shapes = (c: LlamaConfig) =>
    new Map(expectedTensors(c).map((t) => [t.name, { shape: t.shape }]));
  const expectError = (f: () => void, field: string, tensor: string) =>
    assert.throws(f, (e: unknown) => {
      assert.ok(e instanceof ConfigError, String(e));
      assert.equal(e.field, field);
      assert.equal(e.tensor, tensor);
      assert.ok(e.message.includes(tensor) && e.message.includes(field), e.message);
      return true;
    });
  const small = {
    hidden_size: 16,
    intermediate_size: 24,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 10,
  };
  const plain = parseLlamaConfig(small);
  const biased = parseLlamaConfig({ ...small, attention_bias: true, mlp_bias: true });
  const qwen = parseLlamaConfig({ ...small, model_type: "qwen2" });
  // The matching checkpoint passes.
  for (const c of [plain, biased, qwen]) checkConfigAgainstTensors(c, shapes(c), "ckpt");
  // A bias the config switches off.
  expectError(
    () => checkConfigAgainstTensors(plain, shapes(biased), "ckpt"),
    "attention_bias",
    "model.layers.0.self_attn.q_proj.bias",
  );
  const mlpOnly = new Map(shapes(plain));
  mlpOnly.set("model.layers.1.mlp.down_proj.bias", { shape: [16] });
  expectError(
    () => checkConfigAgainstTensors(plain, mlpOnly, "ckpt"),
    "mlp_bias",
    "model.layers.1.mlp.down_proj.bias",
  );
  expectError(
    () => checkConfigAgainstTensors(qwen, shapes(biased), "ckpt"),
    "model_type",
    "model.layers.0.self_attn.o_proj.bias",
  );
  // A bias the config switches on, missing.
  expectError(
    () => checkConfigAgainstTensors(qwen, shapes(plain), "ckpt"),
    "model_type",
    "model.layers.0.self_attn.q_proj.bias",
  );
  expectError(
    () => checkConfigAgainstTensors(biased, shapes(plain), "ckpt"),
    "attention_bias",
    "model.layers.0.self_attn.q_proj.bias",
  );
  // Another head dimension, or another number of key/value heads.
  const wide = parseLlamaConfig({ ...small, head_dim: 8 });
  expectError(
    () => checkConfigAgainstTensors(plain, shapes(wide), "ckpt"),
    "head_dim",
    "model.layers.0.self_attn.q_proj.weight",
  );
  const mha = parseLlamaConfig({ ...small, num_key_value_heads: 4 });
  expectError(
    () => checkConfigAgainstTensors(plain, shapes(mha), "ckpt"),
    "num_key_value_heads",
    "model.layers.0.self_attn.k_proj.weight",
  );
});

Deno.test("config families: loading a folder whose config contradicts its weights names both", async () => {
  const fixture = await requireFixture("llama");
  const { config, tensors } = await loadModelFolder(fixture);
  const dir = await Deno.makeTempDir();
  try {
    const rawConfig = JSON.parse(await Deno.readTextFile(new URL("config.json", fixture)));
    const expectLoadError = async (field: string, tensor: string) => {
      await assert.rejects(loadModelFolder(dir), (e: unknown) => {
        assert.ok(e instanceof ConfigError, String(e));
        assert.equal(e.field, field);
        assert.equal(e.tensor, tensor);
        assert.ok(e.message.includes(field) && e.message.includes(tensor), e.message);
        return true;
      });
    };
    // A q_proj bias in the weights, attention_bias false in the config.
    const withBias = new Map(tensors);
    const bias = "model.layers.1.self_attn.q_proj.bias";
    withBias.set(bias, { shape: [48], data: new Float32Array(48).fill(0.5) });
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(rawConfig));
    await writeSafetensors(`${dir}/model.safetensors`, withBias);
    await expectLoadError("attention_bias", bias);
    // The same through the GPU model's weights check.
    assert.throws(
      () => checkConfigAgainstTensors(config, withBias, "weights"),
      (e: unknown) => e instanceof ConfigError && e.field === "attention_bias",
    );
    // attention_bias true, no bias in the weights.
    await writeSafetensors(`${dir}/model.safetensors`, tensors);
    await Deno.writeTextFile(
      `${dir}/config.json`,
      JSON.stringify({ ...rawConfig, attention_bias: true }),
    );
    await expectLoadError("attention_bias", "model.layers.0.self_attn.q_proj.bias");
    // head_dim 12 where the weights have 6 heads of 8.
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...rawConfig, head_dim: 12 }));
    await expectLoadError("head_dim", "model.layers.0.self_attn.q_proj.weight");
    // The fixture itself loads.
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(rawConfig));
    assert.equal((await loadModelFolder(dir)).tensors.size, tensors.size);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config families: an adapter's base must match the family, biases, RoPE and window", () => {
  const base = parseLlamaConfig(LLAMA2_7B);
  checkSameArchitecture(base, parseLlamaConfig({ ...LLAMA2_7B, torch_dtype: "float32" }));
  checkSameArchitecture(
    parseLlamaConfig(LLAMA32_1B_INSTRUCT),
    parseLlamaConfig(JSON.parse(JSON.stringify(LLAMA32_1B_INSTRUCT))),
  );
  for (
    const [json, field] of [
      [{ ...LLAMA2_7B, rope_scaling: { rope_type: "linear", factor: 2 } }, "rope_scaling"],
      [{ ...LLAMA2_7B, attention_bias: true }, "attention_bias"],
      [{ ...LLAMA2_7B, mlp_bias: true }, "mlp_bias"],
    ] as const
  ) {
    assert.throws(
      () => checkSameArchitecture(base, parseLlamaConfig(json)),
      (e: unknown) => e instanceof AdapterModelMismatchError && e.field === field,
    );
  }
  const mistral = parseLlamaConfig(MISTRAL_7B);
  const asLlama = { ...MISTRAL_7B, model_type: "llama", architectures: ["LlamaForCausalLM"] };
  assert.throws(
    () =>
      checkSameArchitecture(
        parseLlamaConfig({ ...MISTRAL_7B, sliding_window: null }),
        parseLlamaConfig({ ...asLlama, sliding_window: undefined }),
      ),
    (e: unknown) => e instanceof AdapterModelMismatchError && e.field === "model_type",
  );
  assert.throws(
    () => checkSameArchitecture(mistral, parseLlamaConfig({ ...MISTRAL_7B, sliding_window: null })),
    (e: unknown) => e instanceof AdapterModelMismatchError && e.field === "sliding_window",
  );
});

Deno.test("config families: RoPE inverse frequencies as transformers computes them in f32", async () => {
  const ulps = (a: number, b: number) => {
    const bits = (x: number) => new Int32Array(new Float32Array([x]).buffer)[0];
    return Math.abs(bits(a) - bits(b));
  };
  const compare = (what: string, config: LlamaConfig, S: number, want: number[]) => {
    const got = ropeInvFreq(config, S);
    assert.equal(got.length, want.length, what);
    let exact = 0;
    let worst = 0;
    for (let i = 0; i < want.length; i++) {
      const u = ulps(got[i], want[i]);
      if (u === 0) exact++;
      worst = Math.max(worst, u);
    }
    console.log(`${what}: ${exact}/${want.length} bit-exact, worst ${worst} ulp`);
    // pow is the one operation whose last bit may differ between PyTorch and JavaScript.
    assert.ok(worst <= 1, `${what}: ${worst} ulp`);
  };
  const file = JSON.parse(
    await Deno.readTextFile(new URL("./fixtures/rope-inv-freq.json", import.meta.url)),
  );
  for (const c of file.cases) {
    const config = parseLlamaConfig({
      ...c.config,
      intermediate_size: 8,
      num_hidden_layers: 1,
      vocab_size: 10,
    });
    compare(c.name, config, c.seq_len, c.inv_freq);
  }
  for (const name of FIXTURE_NAMES) {
    const dir = await requireFixture(name);
    const config = await readLlamaConfig(new URL("config.json", dir));
    const meta = JSON.parse(await Deno.readTextFile(new URL("expected.json", dir)));
    compare(`fixture ${name}`, config, meta.input_ids[0].length, meta.rope_inv_freq_f32);
  }
});

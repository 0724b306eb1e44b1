import assert from "node:assert/strict";
import {
  adaptableLinears,
  ConfigError,
  expectedTensors,
  headDim,
  llamaConfigToJson,
  parameterCount,
  parseLlamaConfig,
  readLlamaConfig,
  writeLlamaConfig,
} from "../model/config.ts";
import { LLAMA_TINY as FIXTURE, requireLlamaTiny } from "./support/fixture.ts";

const MINIMAL = {
  hidden_size: 64,
  intermediate_size: 172,
  num_hidden_layers: 3,
  num_attention_heads: 8,
  vocab_size: 259,
};

function throwsField(json: unknown, field: string, pattern?: RegExp): void {
  assert.throws(
    () => parseLlamaConfig(json),
    (e: unknown) => {
      assert.ok(e instanceof ConfigError, `expected ConfigError, got ${e}`);
      assert.equal(e.field, field);
      assert.ok(e.message.includes(field), `message names the field: ${e.message}`);
      if (pattern) assert.match(e.message, pattern);
      return true;
    },
  );
}

Deno.test("config: the fixture's config.json parses with its values", async () => {
  await requireLlamaTiny();
  const c = await readLlamaConfig(new URL("config.json", FIXTURE));
  assert.equal(c.hidden_size, 48);
  assert.equal(c.num_attention_heads, 6);
  assert.equal(c.num_key_value_heads, 2);
  assert.equal(c.rope_theta, 500);
  assert.equal(c.rms_norm_eps, 1e-6);
  assert.equal(c.tie_word_embeddings, false);
  assert.equal(headDim(c), 8);
  assert.deepEqual([c.bos_token_id, c.eos_token_id, c.pad_token_id], [1, 2, 0]);
});

Deno.test("config: expected tensors match the fixture checkpoint's header exactly", async () => {
  await requireLlamaTiny();
  const c = await readLlamaConfig(new URL("config.json", FIXTURE));
  const bytes = await Deno.readFile(new URL("model.safetensors", FIXTURE));
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  delete header.__metadata__;
  const fromFile = Object.entries(header as Record<string, { shape: number[] }>)
    .map(([name, v]) => `${name} ${v.shape}`).sort();
  const ours = expectedTensors(c).map((t) => `${t.name} ${t.shape}`).sort();
  assert.deepEqual(ours, fromFile);
});

Deno.test("config: Hugging Face defaults for absent fields", () => {
  const c = parseLlamaConfig(MINIMAL);
  assert.equal(c.num_key_value_heads, 8);
  assert.equal(c.rms_norm_eps, 1e-6);
  assert.equal(c.rope_theta, 10000);
  assert.equal(c.max_position_embeddings, 2048);
  assert.equal(c.tie_word_embeddings, false);
  assert.equal(c.bos_token_id, 1);
  assert.equal(c.eos_token_id, 2);
  assert.equal(c.pad_token_id, null);
  assert.equal(c.head_dim, undefined);
  assert.equal(headDim(c), 8);
});

Deno.test("config: a list of eos ids keeps the first as eos_token_id and writes the list back", () => {
  const c = parseLlamaConfig({ ...MINIMAL, eos_token_id: [2, 7, 9], bos_token_id: null });
  assert.equal(c.eos_token_id, 2);
  assert.deepEqual(c.eos_token_ids, [2, 7, 9]);
  assert.equal(c.bos_token_id, null);
  assert.deepEqual(llamaConfigToJson(c).eos_token_id, [2, 7, 9]);
});

Deno.test("config: invalid configs name the field", () => {
  for (const field of Object.keys(MINIMAL)) {
    const json: Record<string, unknown> = { ...MINIMAL };
    delete json[field];
    throwsField(json, field, /missing/);
    throwsField({ ...MINIMAL, [field]: 2.5 }, field, /positive integer/);
    throwsField({ ...MINIMAL, [field]: "64" }, field);
  }
  throwsField({ ...MINIMAL, num_key_value_heads: 3 }, "num_key_value_heads", /multiple/);
  throwsField({ ...MINIMAL, num_attention_heads: 6 }, "hidden_size", /multiple/);
  throwsField({ ...MINIMAL, head_dim: 7 }, "head_dim", /even/);
  throwsField({ ...MINIMAL, rms_norm_eps: -1 }, "rms_norm_eps");
  throwsField({ ...MINIMAL, rope_theta: 0 }, "rope_theta");
  throwsField({ ...MINIMAL, tie_word_embeddings: "yes" }, "tie_word_embeddings");
  throwsField({ ...MINIMAL, eos_token_id: 259 }, "eos_token_id");
  throwsField({ ...MINIMAL, pad_token_id: -1 }, "pad_token_id");
  throwsField({ ...MINIMAL, model_type: "gpt2" }, "model_type");
  throwsField({ ...MINIMAL, hidden_act: "gelu" }, "hidden_act");
  throwsField({ ...MINIMAL, attention_bias: "yes" }, "attention_bias");
  throwsField(
    { ...MINIMAL, rope_scaling: { rope_type: "yarn", factor: 4 } },
    "rope_scaling.rope_type",
  );
  throwsField({ ...MINIMAL, rope_scaling: { rope_type: "llama3" } }, "rope_scaling.factor");
  assert.throws(() => parseLlamaConfig([1, 2]), ConfigError);
  assert.throws(() => parseLlamaConfig(null), ConfigError);
});

Deno.test("config: head_dim other than hidden/heads shapes q, k, v and o", () => {
  const c = parseLlamaConfig({ ...MINIMAL, num_key_value_heads: 2, head_dim: 12 });
  const lin = new Map(adaptableLinears(c).map((l) => [`${l.layer}.${l.kind}`, l.shape]));
  assert.deepEqual(lin.get("0.q_proj"), [96, 64]);
  assert.deepEqual(lin.get("0.k_proj"), [24, 64]);
  assert.deepEqual(lin.get("0.v_proj"), [24, 64]);
  assert.deepEqual(lin.get("0.o_proj"), [64, 96]);
});

Deno.test("config: tensor list and adaptable linears", () => {
  const untied = parseLlamaConfig({ ...MINIMAL, num_key_value_heads: 2 });
  const tied = parseLlamaConfig({ ...MINIMAL, num_key_value_heads: 2, tie_word_embeddings: true });
  const names = expectedTensors(untied).map((t) => t.name);
  assert.equal(names.length, 1 + 3 * 9 + 1 + 1);
  assert.equal(new Set(names).size, names.length);
  assert.ok(names.includes("lm_head.weight"));
  assert.ok(!expectedTensors(tied).some((t) => t.name === "lm_head.weight"));
  assert.deepEqual(
    expectedTensors(untied).find((t) => t.name === "model.layers.2.mlp.down_proj.weight")?.shape,
    [64, 172],
  );
  const C = 64, I = 172, kv = 2 * 8, V = 259;
  const perLayer = 2 * C + C * C * 2 + 2 * kv * C + 3 * C * I;
  assert.equal(parameterCount(untied), V * C * 2 + C + 3 * perLayer);
  assert.equal(parameterCount(tied), V * C + C + 3 * perLayer);

  const lin = adaptableLinears(untied);
  assert.equal(lin.length, 21);
  assert.deepEqual(lin.slice(0, 7).map((l) => l.kind), [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
  ]);
  const shapes = Object.fromEntries(lin.slice(0, 7).map((l) => [l.kind, l.shape]));
  assert.deepEqual(shapes, {
    q_proj: [64, 64],
    k_proj: [16, 64],
    v_proj: [16, 64],
    o_proj: [64, 64],
    gate_proj: [172, 64],
    up_proj: [172, 64],
    down_proj: [64, 172],
  });
  for (const l of lin) {
    const spec = expectedTensors(untied).find((t) => t.name === l.name);
    assert.deepEqual(spec?.shape, l.shape);
    assert.deepEqual([l.out, l.in], l.shape);
  }
  const some = adaptableLinears(untied, ["q_proj", "v_proj"]);
  assert.deepEqual(some.map((l) => l.name), [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.1.self_attn.q_proj.weight",
    "model.layers.1.self_attn.v_proj.weight",
    "model.layers.2.self_attn.q_proj.weight",
    "model.layers.2.self_attn.v_proj.weight",
  ]);
  assert.throws(() => adaptableLinears(untied, ["qkv"]), ConfigError);
});

Deno.test("config: write then read gives the same config, with the HF markers", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const c = parseLlamaConfig({
      ...MINIMAL,
      num_key_value_heads: 4,
      head_dim: 16,
      tie_word_embeddings: true,
      rope_theta: 500000,
      rms_norm_eps: 1e-5,
      pad_token_id: 0,
    });
    const path = `${dir}/config.json`;
    await writeLlamaConfig(path, c);
    const raw = JSON.parse(await Deno.readTextFile(path));
    assert.deepEqual(raw.architectures, ["LlamaForCausalLM"]);
    assert.equal(raw.model_type, "llama");
    assert.equal(raw.torch_dtype, "float32");
    assert.equal(raw.hidden_act, "silu");
    assert.deepEqual(await readLlamaConfig(path), c);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["config.json"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config: unreadable or non-JSON files give a ConfigError naming the path", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/config.json`, "{ not json");
    await assert.rejects(
      readLlamaConfig(`${dir}/config.json`),
      (e: unknown) => e instanceof ConfigError && e.message.includes(dir),
    );
    await assert.rejects(readLlamaConfig(`${dir}/absent.json`), ConfigError);
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...MINIMAL, vocab_size: 0 }));
    await assert.rejects(
      readLlamaConfig(`${dir}/config.json`),
      (e: unknown) => e instanceof ConfigError && e.field === "vocab_size",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

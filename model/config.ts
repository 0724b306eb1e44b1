/**
 * The Hugging Face `LlamaConfig` (the fields of `config.json` that define the architecture), its
 * validation, and what a config implies: the tensor names and shapes of a checkpoint and the
 * linear layers an adapter can attach to.
 */

import { DomainError } from "../core/errors.ts";
import { z } from "zod";

/** The architecture fields of a Hugging Face LLaMA `config.json`, with its snake_case names. */
export interface LlamaConfig {
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  /** Key/value heads (grouped-query attention); equals `num_attention_heads` without GQA. */
  num_key_value_heads: number;
  vocab_size: number;
  rms_norm_eps: number;
  rope_theta: number;
  max_position_embeddings: number;
  tie_word_embeddings: boolean;
  bos_token_id: number | null;
  /** The first end-of-sequence id when `config.json` lists several (see `eos_token_ids`). */
  eos_token_id: number | null;
  pad_token_id: number | null;
  /** Per-head width; `hidden_size / num_attention_heads` when absent. */
  head_dim?: number;
  /** Every end-of-sequence id, kept only when `config.json` gives a list (LLaMA 3 does). */
  eos_token_ids?: number[];
}

/** A `config.json` that is not a LLaMA config this project can run. */
export class ConfigError extends DomainError {
  static override readonly code: string = "CONFIG";
  static readonly fields = z.object({ field: z.string().optional() });
  /** The offending field, when one is to blame. */
  readonly field?: string;
  constructor(message: string, field?: string) {
    super(message);
    this.field = field;
  }
}

/** Hugging Face's `LlamaConfig` defaults for the fields a config may leave out. */
const HF_DEFAULTS = {
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  max_position_embeddings: 2048,
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
  pad_token_id: null,
} as const;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function positiveInt(json: Record<string, unknown>, field: string): number {
  const v = json[field];
  if (v === undefined || v === null) {
    throw new ConfigError(`config.json: missing required field "${field}"`, field);
  }
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
    throw new ConfigError(
      `config.json: "${field}" must be a positive integer, got ${JSON.stringify(v)}`,
      field,
    );
  }
  return v;
}

function optionalPositiveInt(
  json: Record<string, unknown>,
  field: string,
  fallback: number,
): number {
  return json[field] === undefined || json[field] === null ? fallback : positiveInt(json, field);
}

function positiveNumber(json: Record<string, unknown>, field: string, fallback: number): number {
  const v = json[field] ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    throw new ConfigError(
      `config.json: "${field}" must be a positive finite number, got ${JSON.stringify(v)}`,
      field,
    );
  }
  return v;
}

function tokenId(
  json: Record<string, unknown>,
  field: string,
  fallback: number | null,
  vocab: number,
): number | null {
  const v = field in json ? json[field] : fallback;
  if (v === null || v === undefined) return null;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v >= vocab) {
    throw new ConfigError(
      `config.json: "${field}" must be null or an integer in [0, ${vocab}), got ${
        JSON.stringify(v)
      }`,
      field,
    );
  }
  return v;
}

/**
 * Parses and validates the parsed JSON of a `config.json`. Missing optional fields take Hugging
 * Face's defaults; architecture features this project does not implement (biases, rope scaling,
 * another activation) are refused rather than silently ignored.
 */
export function parseLlamaConfig(json: unknown): LlamaConfig {
  if (!isRecord(json)) throw new ConfigError("config.json: expected a JSON object");

  if (json.model_type !== undefined && json.model_type !== "llama") {
    throw new ConfigError(
      `config.json: model_type ${JSON.stringify(json.model_type)} is not supported (only "llama")`,
      "model_type",
    );
  }
  if (json.hidden_act !== undefined && json.hidden_act !== "silu") {
    throw new ConfigError(
      `config.json: hidden_act ${JSON.stringify(json.hidden_act)} is not supported (only "silu")`,
      "hidden_act",
    );
  }
  for (const field of ["attention_bias", "mlp_bias"]) {
    if (json[field] !== undefined && json[field] !== false) {
      throw new ConfigError(`config.json: ${field} = true is not supported (no biases)`, field);
    }
  }
  if (json.rope_scaling !== undefined && json.rope_scaling !== null) {
    throw new ConfigError(
      "config.json: rope_scaling is not supported (plain RoPE only)",
      "rope_scaling",
    );
  }

  const hidden_size = positiveInt(json, "hidden_size");
  const intermediate_size = positiveInt(json, "intermediate_size");
  const num_hidden_layers = positiveInt(json, "num_hidden_layers");
  const num_attention_heads = positiveInt(json, "num_attention_heads");
  const num_key_value_heads = optionalPositiveInt(json, "num_key_value_heads", num_attention_heads);
  const vocab_size = positiveInt(json, "vocab_size");

  if (num_attention_heads % num_key_value_heads !== 0) {
    throw new ConfigError(
      `config.json: num_attention_heads (${num_attention_heads}) must be a multiple of ` +
        `num_key_value_heads (${num_key_value_heads})`,
      "num_key_value_heads",
    );
  }
  let head_dim: number | undefined;
  if (json.head_dim !== undefined && json.head_dim !== null) {
    head_dim = positiveInt(json, "head_dim");
  } else if (hidden_size % num_attention_heads !== 0) {
    throw new ConfigError(
      `config.json: hidden_size (${hidden_size}) must be a multiple of num_attention_heads ` +
        `(${num_attention_heads}) when head_dim is not given`,
      "hidden_size",
    );
  }
  const hd = head_dim ?? hidden_size / num_attention_heads;
  if (hd % 2 !== 0) {
    const how = head_dim === undefined ? " (hidden_size / num_attention_heads)" : "";
    throw new ConfigError(`config.json: head_dim ${hd}${how} must be even for RoPE`, "head_dim");
  }

  const tie = json.tie_word_embeddings ?? HF_DEFAULTS.tie_word_embeddings;
  if (typeof tie !== "boolean") {
    throw new ConfigError(
      `config.json: "tie_word_embeddings" must be a boolean, got ${JSON.stringify(tie)}`,
      "tie_word_embeddings",
    );
  }

  // LLaMA 3 lists several end-of-sequence ids; generation stops at any of them.
  let eos_token_ids: number[] | undefined;
  let eosJson: Record<string, unknown> = json;
  if (Array.isArray(json.eos_token_id)) {
    const list = json.eos_token_id as unknown[];
    if (list.length === 0) {
      throw new ConfigError('config.json: "eos_token_id" is an empty list', "eos_token_id");
    }
    eos_token_ids = list.map((v, i) => {
      const id = tokenId({ eos_token_id: v }, "eos_token_id", null, vocab_size);
      if (id === null) {
        throw new ConfigError(`config.json: eos_token_id[${i}] is null`, "eos_token_id");
      }
      return id;
    });
    eosJson = { eos_token_id: eos_token_ids[0] };
  }

  const config: LlamaConfig = {
    hidden_size,
    intermediate_size,
    num_hidden_layers,
    num_attention_heads,
    num_key_value_heads,
    vocab_size,
    rms_norm_eps: positiveNumber(json, "rms_norm_eps", HF_DEFAULTS.rms_norm_eps),
    rope_theta: positiveNumber(json, "rope_theta", HF_DEFAULTS.rope_theta),
    max_position_embeddings: optionalPositiveInt(
      json,
      "max_position_embeddings",
      HF_DEFAULTS.max_position_embeddings,
    ),
    tie_word_embeddings: tie,
    bos_token_id: tokenId(json, "bos_token_id", HF_DEFAULTS.bos_token_id, vocab_size),
    eos_token_id: tokenId(eosJson, "eos_token_id", HF_DEFAULTS.eos_token_id, vocab_size),
    pad_token_id: tokenId(json, "pad_token_id", HF_DEFAULTS.pad_token_id, vocab_size),
  };
  if (head_dim !== undefined) config.head_dim = head_dim;
  if (eos_token_ids !== undefined) config.eos_token_ids = eos_token_ids;
  return config;
}

/** Reads and validates `config.json` (or any path to one). */
export async function readLlamaConfig(path: string | URL): Promise<LlamaConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new ConfigError(`cannot read ${path}: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${path}: not valid JSON: ${(e as Error).message}`);
  }
  try {
    return parseLlamaConfig(json);
  } catch (e) {
    if (e instanceof ConfigError) throw new ConfigError(`${path}: ${e.message}`, e.field);
    throw e;
  }
}

/** The `config.json` object Hugging Face `transformers` loads as `LlamaForCausalLM`. */
export function llamaConfigToJson(config: LlamaConfig): Record<string, unknown> {
  const json: Record<string, unknown> = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    torch_dtype: "float32",
    hidden_act: "silu",
    hidden_size: config.hidden_size,
    intermediate_size: config.intermediate_size,
    num_hidden_layers: config.num_hidden_layers,
    num_attention_heads: config.num_attention_heads,
    num_key_value_heads: config.num_key_value_heads,
    vocab_size: config.vocab_size,
    rms_norm_eps: config.rms_norm_eps,
    rope_theta: config.rope_theta,
    max_position_embeddings: config.max_position_embeddings,
    tie_word_embeddings: config.tie_word_embeddings,
    bos_token_id: config.bos_token_id,
    eos_token_id: config.eos_token_ids ?? config.eos_token_id,
    pad_token_id: config.pad_token_id,
    attention_bias: false,
    mlp_bias: false,
  };
  if (config.head_dim !== undefined) json.head_dim = config.head_dim;
  return json;
}

/** Writes `config.json` atomically (a temporary file renamed into place). */
export async function writeLlamaConfig(path: string, config: LlamaConfig): Promise<void> {
  // Validate what we write so that a bad in-memory config never reaches disk.
  parseLlamaConfig(llamaConfigToJson(config));
  const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID()}`;
  try {
    await Deno.writeTextFile(tmp, JSON.stringify(llamaConfigToJson(config), null, 2) + "\n");
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** The per-head width. */
export function headDim(config: LlamaConfig): number {
  return config.head_dim ?? config.hidden_size / config.num_attention_heads;
}

/** A tensor's Hugging Face name and shape. */
export interface TensorSpec {
  name: string;
  shape: number[];
}

/** The kinds of linear layer inside a decoder layer, in model order. */
export const LINEAR_KINDS = [
  "q_proj",
  "k_proj",
  "v_proj",
  "o_proj",
  "gate_proj",
  "up_proj",
  "down_proj",
] as const;
export type LinearKind = typeof LINEAR_KINDS[number];

/** The layers adapted by default (docs/architecture.md §2): every linear layer of every decoder layer. */
export const DEFAULT_TARGETS: readonly LinearKind[] = LINEAR_KINDS;

/** A linear layer `y = x Wᵀ` inside a decoder layer. */
export interface LinearSpec {
  /** The weight's Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`. */
  name: string;
  layer: number;
  kind: LinearKind;
  out: number;
  in: number;
  /** `[out, in]`, as stored. */
  shape: [number, number];
}

/** The Hugging Face name of a decoder layer's linear weight. */
export function linearName(layer: number, kind: LinearKind): string {
  const block = kind === "gate_proj" || kind === "up_proj" || kind === "down_proj"
    ? "mlp"
    : "self_attn";
  return `model.layers.${layer}.${block}.${kind}.weight`;
}

function linearShape(config: LlamaConfig, kind: LinearKind): [number, number] {
  const C = config.hidden_size;
  const qDim = config.num_attention_heads * headDim(config);
  const kvDim = config.num_key_value_heads * headDim(config);
  const I = config.intermediate_size;
  switch (kind) {
    case "q_proj":
      return [qDim, C];
    case "k_proj":
    case "v_proj":
      return [kvDim, C];
    case "o_proj":
      return [C, qDim];
    case "gate_proj":
    case "up_proj":
      return [I, C];
    case "down_proj":
      return [C, I];
  }
}

/**
 * The linear layers an adapter attaches to, layer by layer in model order, restricted to the
 * given kinds (all seven by default). An unknown kind is a `ConfigError`.
 */
export function adaptableLinears(
  config: LlamaConfig,
  targets: readonly string[] = DEFAULT_TARGETS,
): LinearSpec[] {
  for (const t of targets) {
    if (!(LINEAR_KINDS as readonly string[]).includes(t)) {
      throw new ConfigError(
        `unknown target layer "${t}" (expected some of ${LINEAR_KINDS.join(", ")})`,
        "targets",
      );
    }
  }
  const out: LinearSpec[] = [];
  for (let l = 0; l < config.num_hidden_layers; l++) {
    for (const kind of LINEAR_KINDS) {
      if (!targets.includes(kind)) continue;
      const shape = linearShape(config, kind);
      out.push({ name: linearName(l, kind), layer: l, kind, out: shape[0], in: shape[1], shape });
    }
  }
  return out;
}

/**
 * Every tensor a checkpoint of this config holds, with Hugging Face names and shapes, in model
 * order. `lm_head.weight` is absent when the embeddings are tied.
 */
export function expectedTensors(config: LlamaConfig): TensorSpec[] {
  const C = config.hidden_size;
  const specs: TensorSpec[] = [{
    name: "model.embed_tokens.weight",
    shape: [config.vocab_size, C],
  }];
  for (let l = 0; l < config.num_hidden_layers; l++) {
    specs.push({ name: `model.layers.${l}.input_layernorm.weight`, shape: [C] });
    for (const kind of LINEAR_KINDS.slice(0, 4)) {
      specs.push({ name: linearName(l, kind), shape: linearShape(config, kind) });
    }
    specs.push({ name: `model.layers.${l}.post_attention_layernorm.weight`, shape: [C] });
    for (const kind of LINEAR_KINDS.slice(4)) {
      specs.push({ name: linearName(l, kind), shape: linearShape(config, kind) });
    }
  }
  specs.push({ name: "model.norm.weight", shape: [C] });
  if (!config.tie_word_embeddings) {
    specs.push({ name: "lm_head.weight", shape: [config.vocab_size, C] });
  }
  return specs;
}

/** The number of parameters of a checkpoint of this config. */
export function parameterCount(config: LlamaConfig): number {
  let n = 0;
  for (const t of expectedTensors(config)) n += t.shape.reduce((a, b) => a * b, 1);
  return n;
}

/**
 * The Hugging Face config of a LLaMA-family model (`LlamaForCausalLM`, `MistralForCausalLM`,
 * `Qwen2ForCausalLM`: the fields of `config.json` that define the architecture), its validation,
 * and what a config implies: the tensor names and shapes of a checkpoint and the linear layers an
 * adapter can attach to.
 *
 * Every field of a `config.json` is either honoured, known to leave the computation alone (an
 * explicit list: bookkeeping such as `torch_dtype`, generation defaults), or refused by name: a
 * field this project does not know might change the math, so it is never silently ignored.
 */

import { DomainError } from "../core/errors.ts";
import { z } from "zod";

/** The architecture families: Hugging Face's `model_type`. */
export const MODEL_TYPES = ["llama", "mistral", "qwen2"] as const;
export type ModelType = typeof MODEL_TYPES[number];

/** The `architectures` entry of each family. */
export const ARCHITECTURES: Readonly<Record<ModelType, string>> = {
  llama: "LlamaForCausalLM",
  mistral: "MistralForCausalLM",
  qwen2: "Qwen2ForCausalLM",
};

/** The RoPE scalings implemented (Hugging Face's `rope_scaling.rope_type`). */
export const ROPE_TYPES = ["linear", "dynamic", "llama3"] as const;
export type RopeType = typeof ROPE_TYPES[number];

/**
 * `rope_scaling` (Hugging Face's `modeling_rope_utils.py`):
 * - `linear`: inverse frequencies divided by `factor` (positions / factor);
 * - `dynamic`: NTK-aware; when the sequence is longer than `max_position_embeddings` the base
 *   becomes `θ·(factor·S/max − (factor − 1))^(d/(d−2))`, otherwise plain RoPE;
 * - `llama3`: Llama 3.1's wavelength bands: wavelengths above
 *   `original_max_position_embeddings / low_freq_factor` divided by `factor`, below
 *   `original_max_position_embeddings / high_freq_factor` kept, interpolated in between.
 */
export interface RopeScaling {
  rope_type: RopeType;
  factor: number;
  /** llama3 only. */
  low_freq_factor?: number;
  /** llama3 only. */
  high_freq_factor?: number;
  /** llama3 (required); dynamic (optional, must equal `max_position_embeddings`). */
  original_max_position_embeddings?: number;
}

/** The architecture fields of a Hugging Face `config.json`, with its snake_case names. */
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
  /** The family; absent means "llama" (see `modelType`). */
  model_type?: ModelType;
  /** LLaMA: biases on q, k, v and o (kept only when true). Qwen2 has q, k, v biases always. */
  attention_bias?: boolean;
  /** LLaMA: biases on gate, up and down (kept only when true). */
  mlp_bias?: boolean;
  /** RoPE scaling; absent means plain RoPE. */
  rope_scaling?: RopeScaling;
  /**
   * Mistral's sliding window W: query i attends to keys j with i − W < j ≤ i. Absent means
   * full causal attention.
   */
  sliding_window?: number;
}

/** A `config.json` that is not a config this project can run (or contradicts its weights). */
export class ConfigError extends DomainError {
  static override readonly code: string = "CONFIG";
  static readonly fields = z.object({
    field: z.string().optional(),
    tensor: z.string().optional(),
  });
  /** The offending field, when one is to blame. */
  readonly field?: string;
  /** The checkpoint tensor the field contradicts, when there is one. */
  readonly tensor?: string;
  constructor(message: string, field?: string, tensor?: string) {
    super(message);
    this.field = field;
    if (tensor !== undefined) this.tensor = tensor;
  }
}

/** Hugging Face's defaults (`LlamaConfig`, `MistralConfig`, `Qwen2Config`) for absent fields. */
const HF_DEFAULTS: Readonly<
  Record<ModelType, {
    rms_norm_eps: number;
    rope_theta: number;
    max_position_embeddings: number;
    tie_word_embeddings: boolean;
    bos_token_id: number | null;
    eos_token_id: number | null;
    pad_token_id: number | null;
    /** null: `num_attention_heads`. */
    num_key_value_heads: number | null;
  }>
> = {
  llama: {
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    max_position_embeddings: 2048,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    pad_token_id: null,
    num_key_value_heads: null,
  },
  mistral: {
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    max_position_embeddings: 4096 * 32,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    pad_token_id: null,
    num_key_value_heads: 8,
  },
  qwen2: {
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    max_position_embeddings: 32768,
    tie_word_embeddings: false,
    bos_token_id: null,
    eos_token_id: null,
    pad_token_id: null,
    num_key_value_heads: 32,
  },
};

/** MistralConfig's `sliding_window` when the field is absent (null in config.json means none). */
const MISTRAL_DEFAULT_WINDOW = 4096;

/** The fields parsed above into `LlamaConfig`, for every family. */
const PARSED_FIELDS = [
  "hidden_size",
  "intermediate_size",
  "num_hidden_layers",
  "num_attention_heads",
  "num_key_value_heads",
  "vocab_size",
  "rms_norm_eps",
  "rope_theta",
  "max_position_embeddings",
  "tie_word_embeddings",
  "bos_token_id",
  "eos_token_id",
  "pad_token_id",
  "head_dim",
  "rope_scaling",
  "rope_parameters",
  "model_type",
  "architectures",
  "hidden_act",
  "layer_types",
];

/** Fields of each family beyond the common ones (checked in `parseLlamaConfig`). */
const FAMILY_FIELDS: Readonly<Record<ModelType, readonly string[]>> = {
  llama: ["attention_bias", "mlp_bias", "pretraining_tp"],
  mistral: ["sliding_window"],
  qwen2: ["use_sliding_window", "sliding_window", "max_window_layers"],
};

/**
 * Fields the decoder never reads: bookkeeping, training-time initialisation, and
 * `PretrainedConfig`'s generic and generation fields (the generation defaults only matter to
 * `generate()`, whose decoding here is greedy). Any value is accepted.
 */
const HARMLESS_FIELDS = new Set([
  "_name_or_path",
  "_commit_hash",
  "_attn_implementation",
  "_attn_implementation_autoset",
  "torch_dtype",
  "dtype",
  "transformers_version",
  "initializer_range",
  "use_cache",
  "output_attentions",
  "output_hidden_states",
  "return_dict",
  "torchscript",
  "use_bfloat16",
  "tf_legacy_loss",
  "is_decoder",
  "tie_encoder_decoder",
  "chunk_size_feed_forward",
  "cross_attention_hidden_size",
  "tokenizer_class",
  "prefix",
  "sep_token_id",
  "decoder_start_token_id",
  "task_specific_params",
  "problem_type",
  "finetuning_task",
  "id2label",
  "label2id",
  "max_length",
  "min_length",
  "do_sample",
  "early_stopping",
  "num_beams",
  "num_beam_groups",
  "diversity_penalty",
  "temperature",
  "top_k",
  "top_p",
  "typical_p",
  "repetition_penalty",
  "length_penalty",
  "no_repeat_ngram_size",
  "encoder_no_repeat_ngram_size",
  "bad_words_ids",
  "num_return_sequences",
  "output_scores",
  "return_dict_in_generate",
  "forced_bos_token_id",
  "forced_eos_token_id",
  "remove_invalid_values",
  "exponential_decay_length_penalty",
  "suppress_tokens",
  "begin_suppress_tokens",
]);

/**
 * Fields that leave the computation alone only at one value (JSON `null` counts as absent): any
 * other value is refused, with the reason.
 */
const HARMLESS_AT: Readonly<Record<string, { value: unknown; why: string }>> = {
  attention_dropout: { value: 0, why: "dropout on the attention probabilities is not implemented" },
  partial_rotary_factor: { value: 1, why: "RoPE on part of each head is not implemented" },
  is_encoder_decoder: { value: false, why: "only decoder-only models are supported" },
  add_cross_attention: { value: false, why: "cross-attention is not implemented" },
  pruned_heads: { value: {}, why: "pruned attention heads are not implemented" },
  use_mrope: { value: false, why: "multimodal RoPE is not implemented" },
};

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function positiveInt(json: Record<string, unknown>, field: string, label = field): number {
  const v = json[field];
  if (v === undefined || v === null) {
    throw new ConfigError(`config.json: missing required field "${label}"`, label);
  }
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
    throw new ConfigError(
      `config.json: "${label}" must be a positive integer, got ${JSON.stringify(v)}`,
      label,
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

function positiveNumber(
  json: Record<string, unknown>,
  field: string,
  fallback?: number,
  label = field,
): number {
  const v = json[field] ?? fallback;
  if (v === undefined) {
    throw new ConfigError(`config.json: missing required field "${label}"`, label);
  }
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    throw new ConfigError(
      `config.json: "${label}" must be a positive finite number, got ${JSON.stringify(v)}`,
      label,
    );
  }
  return v;
}

function optionalBoolean(json: Record<string, unknown>, field: string, fallback: boolean): boolean {
  const v = json[field] ?? fallback;
  if (typeof v !== "boolean") {
    throw new ConfigError(
      `config.json: "${field}" must be a boolean, got ${JSON.stringify(v)}`,
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

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** The family of a config.json: `model_type`, checked against `architectures`. */
function parseModelType(json: Record<string, unknown>): ModelType {
  const mt = json.model_type;
  if (mt !== undefined && !(MODEL_TYPES as readonly unknown[]).includes(mt)) {
    throw new ConfigError(
      `config.json: model_type ${JSON.stringify(mt)} is not supported (${
        MODEL_TYPES.map((t) => `"${t}"`).join(", ")
      })`,
      "model_type",
    );
  }
  const arch = json.architectures;
  if (arch === undefined || arch === null) return (mt as ModelType | undefined) ?? "llama";
  const known = Object.entries(ARCHITECTURES);
  if (!Array.isArray(arch) || arch.length !== 1 || typeof arch[0] !== "string") {
    throw new ConfigError(
      `config.json: "architectures" must be a list of one class name, got ${JSON.stringify(arch)}`,
      "architectures",
    );
  }
  const family = known.find(([, cls]) => cls === arch[0])?.[0] as ModelType | undefined;
  if (!family) {
    throw new ConfigError(
      `config.json: architectures ${JSON.stringify(arch[0])} is not supported (${
        known.map(([, c]) => c).join(", ")
      })`,
      "architectures",
    );
  }
  if (mt !== undefined && mt !== family) {
    throw new ConfigError(
      `config.json: model_type ${JSON.stringify(mt)} does not match architectures ` +
        `${JSON.stringify(arch[0])} (which is model_type "${family}")`,
      "model_type",
    );
  }
  return family;
}

/** Refuses every field that is neither honoured nor known to be harmless, naming it. */
function checkKnownFields(json: Record<string, unknown>, family: ModelType): void {
  const honoured = new Set([...PARSED_FIELDS, ...FAMILY_FIELDS[family]]);
  for (const [field, value] of Object.entries(json)) {
    if (value === undefined || honoured.has(field) || HARMLESS_FIELDS.has(field)) continue;
    const at = HARMLESS_AT[field];
    if (at) {
      if (value === null || value === undefined || sameJson(value, at.value)) continue;
      throw new ConfigError(
        `config.json: ${field} = ${JSON.stringify(value)} is not supported (${at.why}; only ${
          JSON.stringify(at.value)
        })`,
        field,
      );
    }
    const where = Object.entries(FAMILY_FIELDS).find(([, fs]) => fs.includes(field));
    const hint = where ? ` (it belongs to model_type "${where[0]}", this is "${family}")` : "";
    throw new ConfigError(
      `config.json: unknown field "${field}" for ${
        ARCHITECTURES[family]
      }${hint}: it might change the computation, so it is refused rather than ignored`,
      field,
    );
  }
}

const ROPE_KEYS: Readonly<Record<RopeType, { required: string[]; optional: string[] }>> = {
  linear: { required: ["factor"], optional: [] },
  dynamic: { required: ["factor"], optional: ["original_max_position_embeddings"] },
  llama3: {
    required: ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
    optional: [],
  },
};

/**
 * `rope_scaling` (or the scaling part of transformers 5's `rope_parameters`), validated; null for
 * plain RoPE. `what` names the field in messages.
 */
function parseRopeScaling(
  raw: Record<string, unknown>,
  what: string,
  maxPositions: number,
  ignore: readonly string[] = [],
): RopeScaling | null {
  if ("type" in raw && "rope_type" in raw && raw.type !== raw.rope_type) {
    throw new ConfigError(
      `config.json: ${what} has both "type" ${JSON.stringify(raw.type)} and "rope_type" ` +
        `${JSON.stringify(raw.rope_type)}`,
      what,
    );
  }
  // "type" is the older name of "rope_type" (Hugging Face still reads it).
  const type = raw.rope_type ?? raw.type ?? "default";
  const rest = Object.keys(raw).filter((k) => !["type", "rope_type", ...ignore].includes(k));
  if (type === "default") {
    if (rest.length > 0) {
      throw new ConfigError(
        `config.json: ${what}.${rest[0]} has no meaning for rope_type "default"`,
        `${what}.${rest[0]}`,
      );
    }
    return null;
  }
  if (!(ROPE_TYPES as readonly unknown[]).includes(type)) {
    throw new ConfigError(
      `config.json: ${what}.rope_type ${JSON.stringify(type)} is not supported (${
        ROPE_TYPES.map((t) => `"${t}"`).join(", ")
      })`,
      `${what}.rope_type`,
    );
  }
  const rt = type as RopeType;
  const keys = ROPE_KEYS[rt];
  for (const k of rest) {
    if (!keys.required.includes(k) && !keys.optional.includes(k)) {
      throw new ConfigError(
        `config.json: ${what}.${k} is not a parameter of rope_type "${rt}" (${
          [...keys.required, ...keys.optional].join(", ")
        }); refused rather than ignored`,
        `${what}.${k}`,
      );
    }
  }
  for (const k of keys.required) {
    if (raw[k] === undefined || raw[k] === null) {
      throw new ConfigError(
        `config.json: ${what}.${k} is required for rope_type "${rt}"`,
        `${what}.${k}`,
      );
    }
  }
  const out: RopeScaling = {
    rope_type: rt,
    factor: positiveNumber(raw, "factor", undefined, `${what}.factor`),
  };
  if (rt === "llama3") {
    out.low_freq_factor = positiveNumber(
      raw,
      "low_freq_factor",
      undefined,
      `${what}.low_freq_factor`,
    );
    out.high_freq_factor = positiveNumber(
      raw,
      "high_freq_factor",
      undefined,
      `${what}.high_freq_factor`,
    );
    if (!(out.high_freq_factor > out.low_freq_factor)) {
      throw new ConfigError(
        `config.json: ${what}.high_freq_factor (${out.high_freq_factor}) must exceed ` +
          `low_freq_factor (${out.low_freq_factor})`,
        `${what}.high_freq_factor`,
      );
    }
  }
  if (raw.original_max_position_embeddings !== undefined) {
    const field = `${what}.original_max_position_embeddings`;
    out.original_max_position_embeddings = positiveInt(
      raw,
      "original_max_position_embeddings",
      field,
    );
    if (rt === "dynamic" && out.original_max_position_embeddings !== maxPositions) {
      // Hugging Face's dynamic NTK scaling reads max_position_embeddings and (depending on the
      // version) ignores or uses this one: refused unless both agree.
      throw new ConfigError(
        `config.json: ${field} (${out.original_max_position_embeddings}) differs from ` +
          `max_position_embeddings (${maxPositions}); dynamic scaling is only defined here when ` +
          "they agree",
        field,
      );
    }
  }
  return out;
}

/** RoPE: `rope_theta` and `rope_scaling`, or transformers 5's `rope_parameters`. */
function parseRope(
  json: Record<string, unknown>,
  fallbackTheta: number,
  maxPositions: number,
): { theta: number; scaling: RopeScaling | null } {
  const params = json.rope_parameters;
  if (params !== undefined && params !== null) {
    if (!isRecord(params)) {
      throw new ConfigError(
        `config.json: "rope_parameters" must be an object, got ${JSON.stringify(params)}`,
        "rope_parameters",
      );
    }
    if (json.rope_scaling !== undefined && json.rope_scaling !== null) {
      throw new ConfigError(
        'config.json: both "rope_parameters" and "rope_scaling" are given; keep one',
        "rope_scaling",
      );
    }
    const theta = positiveNumber(params, "rope_theta", undefined, "rope_parameters.rope_theta");
    if (json.rope_theta !== undefined && json.rope_theta !== null && json.rope_theta !== theta) {
      throw new ConfigError(
        `config.json: rope_theta (${json.rope_theta}) differs from rope_parameters.rope_theta ` +
          `(${theta})`,
        "rope_theta",
      );
    }
    return {
      theta,
      scaling: parseRopeScaling(params, "rope_parameters", maxPositions, ["rope_theta"]),
    };
  }
  const theta = positiveNumber(json, "rope_theta", fallbackTheta);
  const rs = json.rope_scaling;
  if (rs === undefined || rs === null) return { theta, scaling: null };
  if (!isRecord(rs)) {
    throw new ConfigError(
      `config.json: "rope_scaling" must be null or an object, got ${JSON.stringify(rs)}`,
      "rope_scaling",
    );
  }
  return { theta, scaling: parseRopeScaling(rs, "rope_scaling", maxPositions) };
}

/**
 * Parses and validates the parsed JSON of a `config.json` (`LlamaForCausalLM`,
 * `MistralForCausalLM`, `Qwen2ForCausalLM`). Missing optional fields take Hugging Face's defaults
 * for the family; fields this project does not implement (another activation, yarn RoPE, Qwen2's
 * sliding windows, an unknown field) are refused by name rather than silently ignored.
 */
export function parseLlamaConfig(json: unknown): LlamaConfig {
  if (!isRecord(json)) throw new ConfigError("config.json: expected a JSON object");
  const family = parseModelType(json);
  const defaults = HF_DEFAULTS[family];
  checkKnownFields(json, family);

  if (json.hidden_act !== undefined && json.hidden_act !== "silu") {
    throw new ConfigError(
      `config.json: hidden_act ${JSON.stringify(json.hidden_act)} is not supported (only "silu")`,
      "hidden_act",
    );
  }
  if (
    family === "llama" && json.pretraining_tp !== undefined && json.pretraining_tp !== null &&
    json.pretraining_tp !== 1
  ) {
    // transformers splits the projections into pretraining_tp slices (a different summation).
    throw new ConfigError(
      `config.json: pretraining_tp ${JSON.stringify(json.pretraining_tp)} is not supported ` +
        "(only 1)",
      "pretraining_tp",
    );
  }

  const hidden_size = positiveInt(json, "hidden_size");
  const intermediate_size = positiveInt(json, "intermediate_size");
  const num_hidden_layers = positiveInt(json, "num_hidden_layers");
  const num_attention_heads = positiveInt(json, "num_attention_heads");
  const num_key_value_heads = optionalPositiveInt(
    json,
    "num_key_value_heads",
    defaults.num_key_value_heads ?? num_attention_heads,
  );
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

  const tie = optionalBoolean(json, "tie_word_embeddings", defaults.tie_word_embeddings);
  const max_position_embeddings = optionalPositiveInt(
    json,
    "max_position_embeddings",
    defaults.max_position_embeddings,
  );
  const rope = parseRope(json, defaults.rope_theta, max_position_embeddings);

  // Biases: LLaMA's two switches; Qwen2 always has q, k, v biases; Mistral none.
  let attention_bias = false;
  let mlp_bias = false;
  if (family === "llama") {
    attention_bias = optionalBoolean(json, "attention_bias", false);
    mlp_bias = optionalBoolean(json, "mlp_bias", false);
  }

  // Sliding windows: Mistral's applies to every layer; Qwen2's is off unless use_sliding_window.
  let sliding_window: number | null = null;
  if (family === "mistral") {
    if (json.sliding_window === undefined) sliding_window = MISTRAL_DEFAULT_WINDOW;
    else if (json.sliding_window !== null) sliding_window = positiveInt(json, "sliding_window");
  }
  if (family === "qwen2") {
    if (optionalBoolean(json, "use_sliding_window", false)) {
      throw new ConfigError(
        "config.json: use_sliding_window = true is not supported for Qwen2 (sliding-window " +
          "attention on the layers from max_window_layers up); only false",
        "use_sliding_window",
      );
    }
    // With use_sliding_window false, sliding_window and max_window_layers are not read.
  }
  if (json.layer_types !== undefined && json.layer_types !== null) {
    const want = sliding_window === null ? "full_attention" : "sliding_attention";
    const lt = json.layer_types;
    if (
      !Array.isArray(lt) || lt.length !== num_hidden_layers || lt.some((t) => t !== want)
    ) {
      throw new ConfigError(
        `config.json: layer_types must list "${want}" for each of the ${num_hidden_layers} ` +
          `layers (the attention this config implies), got ${JSON.stringify(lt)}`,
        "layer_types",
      );
    }
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
    rms_norm_eps: positiveNumber(json, "rms_norm_eps", defaults.rms_norm_eps),
    rope_theta: rope.theta,
    max_position_embeddings,
    tie_word_embeddings: tie,
    bos_token_id: tokenId(json, "bos_token_id", defaults.bos_token_id, vocab_size),
    eos_token_id: tokenId(eosJson, "eos_token_id", defaults.eos_token_id, vocab_size),
    pad_token_id: tokenId(json, "pad_token_id", defaults.pad_token_id, vocab_size),
  };
  if (head_dim !== undefined) config.head_dim = head_dim;
  if (eos_token_ids !== undefined) config.eos_token_ids = eos_token_ids;
  if (family !== "llama") config.model_type = family;
  if (attention_bias) config.attention_bias = true;
  if (mlp_bias) config.mlp_bias = true;
  if (rope.scaling) config.rope_scaling = rope.scaling;
  if (sliding_window !== null) config.sliding_window = sliding_window;
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
    if (e instanceof ConfigError) throw new ConfigError(`${path}: ${e.message}`, e.field, e.tensor);
    throw e;
  }
}

/** The family of a config ("llama" when `model_type` is absent). */
export function modelType(config: LlamaConfig): ModelType {
  return config.model_type ?? "llama";
}

/** The sliding window W of the attention, or null for full causal attention. */
export function slidingWindow(config: LlamaConfig): number | null {
  return config.sliding_window ?? null;
}

/** The `config.json` object Hugging Face `transformers` loads as the same model class. */
export function llamaConfigToJson(config: LlamaConfig): Record<string, unknown> {
  const family = modelType(config);
  const json: Record<string, unknown> = {
    architectures: [ARCHITECTURES[family]],
    model_type: family,
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
    rope_scaling: config.rope_scaling ? { ...config.rope_scaling } : null,
    max_position_embeddings: config.max_position_embeddings,
    tie_word_embeddings: config.tie_word_embeddings,
    bos_token_id: config.bos_token_id,
    eos_token_id: config.eos_token_ids ?? config.eos_token_id,
    pad_token_id: config.pad_token_id,
  };
  if (family === "llama") {
    json.attention_bias = config.attention_bias === true;
    json.mlp_bias = config.mlp_bias === true;
  }
  // MistralConfig's default window is 4096, so "none" must be written as null.
  if (family === "mistral") json.sliding_window = config.sliding_window ?? null;
  if (family === "qwen2") json.use_sliding_window = false;
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

/** A linear layer `y = x Wᵀ (+ b)` inside a decoder layer. */
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

const MLP_KINDS: readonly LinearKind[] = ["gate_proj", "up_proj", "down_proj"];

function linearPrefix(layer: number, kind: LinearKind): string {
  const block = MLP_KINDS.includes(kind) ? "mlp" : "self_attn";
  return `model.layers.${layer}.${block}.${kind}`;
}

/** The Hugging Face name of a decoder layer's linear weight. */
export function linearName(layer: number, kind: LinearKind): string {
  return `${linearPrefix(layer, kind)}.weight`;
}

/** The Hugging Face name of a decoder layer's linear bias (present or not). */
export function linearBiasName(layer: number, kind: LinearKind): string {
  return `${linearPrefix(layer, kind)}.bias`;
}

/** The bias name of a linear weight's name (`….q_proj.weight` → `….q_proj.bias`). */
export function biasNameOf(weightName: string): string {
  return weightName.replace(/\.weight$/, ".bias");
}

/**
 * The config field that switches a kind's bias on or off: LLaMA's `attention_bias` (q, k, v, o)
 * and `mlp_bias` (gate, up, down); the family itself (`model_type`) for Qwen2 and Mistral.
 */
function biasField(config: LlamaConfig, kind: LinearKind): string {
  if (modelType(config) !== "llama") return "model_type";
  return MLP_KINDS.includes(kind) ? "mlp_bias" : "attention_bias";
}

/** Whether the linears of this kind carry a bias. */
export function hasBias(config: LlamaConfig, kind: LinearKind): boolean {
  switch (modelType(config)) {
    case "llama":
      return MLP_KINDS.includes(kind) ? config.mlp_bias === true : config.attention_bias === true;
    case "qwen2":
      return kind === "q_proj" || kind === "k_proj" || kind === "v_proj";
    case "mistral":
      return false;
  }
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
 * order: a linear's bias (`[out]`, where the config has one) follows its weight.
 * `lm_head.weight` is absent when the embeddings are tied.
 */
export function expectedTensors(config: LlamaConfig): TensorSpec[] {
  const C = config.hidden_size;
  const specs: TensorSpec[] = [{
    name: "model.embed_tokens.weight",
    shape: [config.vocab_size, C],
  }];
  const linear = (l: number, kind: LinearKind) => {
    const shape = linearShape(config, kind);
    specs.push({ name: linearName(l, kind), shape });
    if (hasBias(config, kind)) specs.push({ name: linearBiasName(l, kind), shape: [shape[0]] });
  };
  for (let l = 0; l < config.num_hidden_layers; l++) {
    specs.push({ name: `model.layers.${l}.input_layernorm.weight`, shape: [C] });
    for (const kind of LINEAR_KINDS.slice(0, 4)) linear(l, kind);
    specs.push({ name: `model.layers.${l}.post_attention_layernorm.weight`, shape: [C] });
    for (const kind of LINEAR_KINDS.slice(4)) linear(l, kind);
  }
  specs.push({ name: "model.norm.weight", shape: [C] });
  if (!config.tie_word_embeddings) {
    specs.push({ name: "lm_head.weight", shape: [config.vocab_size, C] });
  }
  return specs;
}

/**
 * The tensors a checkpoint of this family could hold that this config says are absent (the
 * biases it switches off), each with the field that says so. A loader reads them when present
 * so that `checkConfigAgainstTensors` can refuse the contradiction.
 */
export function excludedTensors(config: LlamaConfig): { name: string; field: string }[] {
  const out: { name: string; field: string }[] = [];
  for (let l = 0; l < config.num_hidden_layers; l++) {
    for (const kind of LINEAR_KINDS) {
      if (!hasBias(config, kind)) {
        out.push({ name: linearBiasName(l, kind), field: biasField(config, kind) });
      }
    }
  }
  return out;
}

/** The names a loader should read: the expected tensors and the excluded ones. */
export function checkpointTensorNames(config: LlamaConfig): Set<string> {
  return new Set([
    ...expectedTensors(config).map((t) => t.name),
    ...excludedTensors(config).map((t) => t.name),
  ]);
}

function fmt(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/**
 * Refuses a checkpoint that contradicts its config where a config field is to blame, with a
 * `ConfigError` naming the field and the tensor: a bias present that the config switches off (or
 * absent that it switches on), and q/k/v/o shapes that imply another head dimension or number
 * of key/value heads. Other mismatches are left to the loader's shape check. `tensors` maps
 * names to shapes (extra names are ignored); `source` prefixes the messages.
 */
export function checkConfigAgainstTensors(
  config: LlamaConfig,
  tensors: ReadonlyMap<string, { shape: readonly number[] }>,
  source: string,
): void {
  for (const { name, field } of excludedTensors(config)) {
    if (!tensors.has(name)) continue;
    const value = field === "model_type"
      ? `model_type "${modelType(config)}" has no such bias`
      : `config.json has ${field} = false`;
    throw new ConfigError(
      `${source}: the checkpoint holds "${name}" but ${value}; the config contradicts the ` +
        "weights",
      field,
      name,
    );
  }
  const H = config.num_attention_heads;
  const KV = config.num_key_value_heads;
  const C = config.hidden_size;
  const D = headDim(config);
  const dField = config.head_dim === undefined
    ? "head_dim (absent: hidden_size / num_attention_heads)"
    : "head_dim";
  for (let l = 0; l < config.num_hidden_layers; l++) {
    for (const kind of LINEAR_KINDS) {
      const bias = linearBiasName(l, kind);
      if (hasBias(config, kind) && !tensors.has(bias) && tensors.has(linearName(l, kind))) {
        const field = biasField(config, kind);
        const why = field === "model_type"
          ? `model_type "${modelType(config)}" has a bias there`
          : `config.json has ${field} = true`;
        throw new ConfigError(
          `${source}: the checkpoint has no "${bias}" but ${why}; the config contradicts the ` +
            "weights",
          field,
          bias,
        );
      }
    }
    const q = tensors.get(linearName(l, "q_proj"))?.shape;
    if (q && q.length === 2 && q[1] === C && q[0] !== H * D && q[0] % H === 0) {
      throw new ConfigError(
        `${source}: "${linearName(l, "q_proj")}" has shape ${fmt(q)}, i.e. ${H} heads of ` +
          `${q[0] / H}, but ${dField} is ${D}; the config contradicts the weights`,
        "head_dim",
        linearName(l, "q_proj"),
      );
    }
    const k = tensors.get(linearName(l, "k_proj"))?.shape;
    if (k && k.length === 2 && k[1] === C && k[0] !== KV * D && k[0] % D === 0) {
      throw new ConfigError(
        `${source}: "${linearName(l, "k_proj")}" has shape ${fmt(k)}, i.e. ${k[0] / D} ` +
          `key/value heads of ${D}, but num_key_value_heads is ${KV}; the config contradicts ` +
          "the weights",
        "num_key_value_heads",
        linearName(l, "k_proj"),
      );
    }
  }
}

/** The number of parameters of a checkpoint of this config. */
export function parameterCount(config: LlamaConfig): number {
  let n = 0;
  for (const t of expectedTensors(config)) n += t.shape.reduce((a, b) => a * b, 1);
  return n;
}

/**
 * A tiny model folder and data set for end-to-end runs of the fine-tuning job: a random
 * byte-level LLaMA (2 layers, hidden 32, GQA) and slices of the shipped benchmark.
 */
import { expectedTensors, type LlamaConfig, llamaConfigToJson } from "../../model/config.ts";
import {
  type FloatDtype,
  type HostTensor,
  saveModelFolder,
  writeSafetensors,
} from "../../model/safetensors.ts";
import { initWeights } from "../../train/pretrain/pretrain.ts";
import { Rng } from "../../core/rng.ts";
import { defaultOptions, type FinetuneOptions } from "../../train/cli/options.ts";

export const TINY_CONFIG: LlamaConfig = {
  hidden_size: 32,
  intermediate_size: 48,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 259,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  max_position_embeddings: 64,
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
  pad_token_id: 0,
};

const BENCH = new URL("../../data/bench/", import.meta.url);

/** Writes `<dir>/model`, `<dir>/train.jsonl` (64 lines) and `<dir>/test.jsonl` (15 lines). */
export async function writeTinySetup(dir: string, seed = 1): Promise<void> {
  await saveModelFolder(`${dir}/model`, TINY_CONFIG, initWeights(TINY_CONFIG, new Rng(seed), 0.08));
  const lines = (await Deno.readTextFile(new URL("train.jsonl", BENCH))).split("\n");
  // Every 50th line mixes the four task families.
  await Deno.writeTextFile(
    `${dir}/train.jsonl`,
    lines.filter((_, i) => i % 50 === 0).slice(0, 64).join("\n") + "\n",
  );
  const test = (await Deno.readTextFile(new URL("test.jsonl", BENCH))).split("\n");
  await Deno.writeTextFile(
    `${dir}/test.jsonl`,
    test.filter((_, i) => i % 40 === 0).slice(0, 16).join("\n") + "\n",
  );
}

/** Options of a short run on the tiny setup (K = 2, r = 2, 4 steps of batch 8). */
export function tinyOptions(dir: string, over: Partial<FinetuneOptions> = {}): FinetuneOptions {
  return {
    ...defaultOptions(),
    model: `${dir}/model`,
    data: `${dir}/train.jsonl`,
    eval: `${dir}/test.jsonl`,
    workers: 2,
    rank: 2,
    alpha: 2,
    batchSize: 8,
    microBatch: 2,
    maxSteps: 4,
    lr: 5e-3,
    warmupRatio: 0,
    checkpointEvery: 0,
    checksumEvery: 2,
    out: `${dir}/run`,
    ...over,
  };
}

/**
 * Writes a model folder as a sharded Hugging Face checkpoint: the tensors the config expects, in
 * model order, split into `shards` files of `dtype` (`model-0000i-of-0000N.safetensors`), the
 * index with `metadata.total_size`, and config.json with `torch_dtype` plus the `extra` fields.
 * Returns the index's weight_map.
 */
export async function writeShardedModel(
  dir: string,
  config: LlamaConfig,
  weights: ReadonlyMap<string, HostTensor>,
  options: { shards: number; dtype: FloatDtype; extra?: Record<string, unknown> },
): Promise<Record<string, string>> {
  await Deno.mkdir(dir, { recursive: true });
  const names = expectedTensors(config).map((t) => t.name);
  const per = Math.ceil(names.length / options.shards);
  const weightMap: Record<string, string> = {};
  let total = 0;
  const p = (k: number) => String(k).padStart(5, "0");
  for (let i = 0; i < options.shards; i++) {
    const file = `model-${p(i + 1)}-of-${p(options.shards)}.safetensors`;
    const part = new Map(names.slice(i * per, (i + 1) * per).map((n) => [n, weights.get(n)!]));
    await writeSafetensors(`${dir}/${file}`, part, { format: "pt" }, options.dtype);
    for (const [n, t] of part) {
      weightMap[n] = file;
      total += t.data.length * (options.dtype === "F32" ? 4 : 2);
    }
  }
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2),
  );
  const torchDtype = { F32: "float32", F16: "float16", BF16: "bfloat16" }[options.dtype];
  await Deno.writeTextFile(
    `${dir}/config.json`,
    JSON.stringify({ ...llamaConfigToJson(config), torch_dtype: torchDtype, ...options.extra }),
  );
  return weightMap;
}

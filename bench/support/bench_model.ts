/**
 * The benchmarks' model: the shipped base model's size (hidden 128, intermediate 344, 4 layers,
 * 4 heads on 2 KV heads, byte vocabulary 259; ~0.79M parameters), seconds a step on lavapipe.
 * Used by bench/model_bench.ts, bench/train_bench.ts and bench/gpu_machine_model.ts.
 * @module
 */
import type { LlamaConfig } from "../../model/config.ts";
import { saveModelFolder } from "../../model/safetensors.ts";
import { initWeights } from "../../train/pretrain/pretrain.ts";
import { Rng } from "../../core/rng.ts";

/** The benchmarks' model config, with room for `positions` positions (a bench's sequence length). */
export function benchModelConfig(positions: number): LlamaConfig {
  return {
    hidden_size: 128,
    intermediate_size: 344,
    num_hidden_layers: 4,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 259,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    max_position_embeddings: positions,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    pad_token_id: 0,
  };
}

/** Writes a random-init model folder of `config` to `dir` (seed 3). */
export async function writeBenchModel(dir: string, config: LlamaConfig): Promise<void> {
  // Std 1/sqrt(hidden): the activations keep their scale through the layers.
  const weights = initWeights(config, new Rng(3), 1 / Math.sqrt(config.hidden_size));
  await saveModelFolder(dir, config, weights);
}

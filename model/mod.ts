/**
 * The LLaMA model: config, safetensors I/O, tokenizers, the WebGPU forward/backward and
 * generation, and the float64 reference it is checked against.
 * @module
 */
export * from "./config.ts";
export * from "./safetensors.ts";
export * from "./tokenizer.ts";
export * from "./llama.ts";
export {
  type ReferenceAdapter,
  type ReferenceBatch,
  referenceForward,
  referenceForwardBackward,
  referenceGreedy,
  ReferenceInputError,
} from "./reference/llama.ts";
export type { MicroBatch } from "./batch.ts";

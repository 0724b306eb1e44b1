/**
 * Typed errors of the LLaMA model on the GPU: bad weights, bad options, bad batches or prompts.
 * Engine failures (device lost, validation) stay the `GpuError`s of `gpu/`.
 * @module
 */

import { DomainError } from "../core/errors.ts";
import { z } from "zod";

/** Base class of the model's own errors. */
export class LlamaError extends DomainError {
  static override readonly code: string = "LLAMA";
}

/** A weight is missing, misshaped, or not one the model has (or has no gradient/adapter). */
export class LlamaWeightError extends LlamaError {
  static override readonly code: string = "LLAMA_WEIGHT";
  static readonly fields = z.object({ tensor: z.string() });
  constructor(readonly tensor: string, message: string) {
    super(message);
  }
}

/** The model options are inconsistent (sizes, adapter targets, gradient mode). */
export class LlamaOptionsError extends LlamaError {
  static override readonly code: string = "LLAMA_OPTIONS";
}

/** A batch, a prompt or a call does not fit the model (token ids, rows, sequence length). */
export class LlamaInputError extends LlamaError {
  static override readonly code: string = "LLAMA_INPUT";
}

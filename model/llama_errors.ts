/**
 * Typed errors of the LLaMA model on the GPU: bad weights, bad options, bad batches or prompts.
 * Engine failures (device lost, validation) stay the `GpuError`s of `gpu/`.
 * @module
 */

/** Base class of the model's own errors. */
export class LlamaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A weight is missing, misshaped, or not one the model has (or has no gradient/adapter). */
export class LlamaWeightError extends LlamaError {
  constructor(readonly tensor: string, message: string) {
    super(message);
  }
}

/** The model options are inconsistent (sizes, adapter targets, gradient mode). */
export class LlamaOptionsError extends LlamaError {}

/** A batch, a prompt or a call does not fit the model (token ids, rows, sequence length). */
export class LlamaInputError extends LlamaError {}

/**
 * The errors of exporting a run as a PEFT LoRA adapter (train/export/). Each names the folder,
 * tensor or flag at fault, so that the CLI can print it as one line.
 * @module
 */
import { z } from "zod";
import { DomainError } from "../../core/errors.ts";

/** An adapter cannot be exported (the base of this folder's errors). */
export class AdapterExportError extends DomainError {
  static override readonly code: string = "ADAPTER_EXPORT";
}

/** The base and the tuned model are not the same architecture (configs or shapes differ). */
export class AdapterModelMismatchError extends AdapterExportError {
  static override readonly code: string = "ADAPTER_MODEL_MISMATCH";
  static readonly fields = z.object({ field: z.string() });
  /** The config field or tensor that differs. */
  readonly field: string;
  constructor(message: string, field: string) {
    super(message);
    this.field = field;
  }
}

/** A tensor that the adapter needs is not in one of the two model folders. */
export class AdapterMissingTensorError extends AdapterExportError {
  static override readonly code: string = "ADAPTER_MISSING_TENSOR";
  static readonly fields = z.object({ folder: z.string(), tensor: z.string() });
  readonly folder: string;
  readonly tensor: string;
  constructor(message: string, folder: string, tensor: string, options?: ErrorOptions) {
    super(message, options);
    this.folder = folder;
    this.tensor = tensor;
  }
}

/** The adapter's rank is missing (a method without a rank bound) or larger than a matrix's. */
export class AdapterRankError extends AdapterExportError {
  static override readonly code: string = "ADAPTER_RANK";
}

/** The output folder is not usable: not empty (without --overwrite), or not a folder. */
export class AdapterOutputError extends AdapterExportError {
  static override readonly code: string = "ADAPTER_OUTPUT";
}

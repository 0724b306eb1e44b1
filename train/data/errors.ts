/**
 * Errors of the data pipeline: every one names what was wrong and where, so that a bad data
 * file or setting is fixed from the message alone.
 * @module
 */

import { DomainError } from "../../core/errors.ts";
import { z } from "zod";

/** Base class of the data pipeline's errors. */
export class DataError extends DomainError {
  static override readonly code: string = "DATA";
}

/** A JSONL line that is not a JSON object with the expected string fields. */
export class JsonlLineError extends DataError {
  static override readonly code: string = "JSONL_LINE";
  static readonly fields = z.object({ file: z.string(), line: z.number(), reason: z.string() });
  constructor(readonly file: string, readonly line: number, readonly reason: string) {
    super(`${file}:${line}: ${reason}`);
  }
}

/** A data file that does not exist or cannot be read. */
export class DataFileError extends DataError {
  static override readonly code: string = "DATA_FILE";
  static readonly fields = z.object({ file: z.string() });
  constructor(readonly file: string, reason: string) {
    super(`${file}: ${reason}`);
  }
}

/** A data set with no usable example. */
export class EmptyDatasetError extends DataError {
  static override readonly code: string = "EMPTY_DATASET";
  static readonly fields = z.object({ file: z.string() });
  constructor(readonly file: string, skipped: number) {
    super(
      skipped > 0
        ? `${file}: no usable example (${skipped} malformed line(s) skipped)`
        : `${file}: the data set is empty`,
    );
  }
}

/** Batch size, workers, micro-batch and data size that do not fit together. */
export class BatchConfigError extends DataError {
  static override readonly code: string = "BATCH_CONFIG";
}

/**
 * A chat template that is missing, does not parse or fails on a conversation (`raise_exception`,
 * an error in the template), or a conversation whose answers cannot be located in its text.
 * `template` names the template's file.
 */
export class ChatTemplateError extends DataError {
  static override readonly code: string = "CHAT_TEMPLATE";
  static readonly fields = z.object({ template: z.string() });
  constructor(message: string, readonly template: string) {
    super(message);
  }
}

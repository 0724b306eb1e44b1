/**
 * Errors of the data pipeline: every one names what was wrong and where, so that a bad data
 * file or setting is fixed from the message alone.
 * @module
 */

/** Base class of the data pipeline's errors. */
export class DataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DataError";
  }
}

/** A JSONL line that is not a JSON object with the expected string fields. */
export class JsonlLineError extends DataError {
  constructor(readonly file: string, readonly line: number, readonly reason: string) {
    super(`${file}:${line}: ${reason}`);
    this.name = "JsonlLineError";
  }
}

/** A data file that does not exist or cannot be read. */
export class DataFileError extends DataError {
  constructor(readonly file: string, reason: string) {
    super(`${file}: ${reason}`);
    this.name = "DataFileError";
  }
}

/** A data set with no usable example. */
export class EmptyDatasetError extends DataError {
  constructor(readonly file: string, skipped: number) {
    super(
      skipped > 0
        ? `${file}: no usable example (${skipped} malformed line(s) skipped)`
        : `${file}: the data set is empty`,
    );
    this.name = "EmptyDatasetError";
  }
}

/** Batch size, workers, micro-batch and data size that do not fit together. */
export class BatchConfigError extends DataError {
  constructor(message: string) {
    super(message);
    this.name = "BatchConfigError";
  }
}

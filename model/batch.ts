/**
 * A micro-batch as the model consumes it: M examples of seqLen token ids side by side, with the
 * mask of the positions whose token is a loss target. The data pipeline (train/data) makes them;
 * the model only reads them, so the type lives with the model.
 * @module
 */

/** M examples side by side, row-major [M, seqLen]. */
export interface MicroBatch {
  ids: Int32Array;
  targetMask: Uint8Array;
  /** Number of (row, j) with j >= 1 and targetMask = 1: the loss's denominator. */
  targets: number;
  /** M, the number of rows. */
  rows: number;
  seqLen: number;
}

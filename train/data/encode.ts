/**
 * Token ids and loss masks of examples (docs/architecture.md §4), and their packing into micro-batches.
 *
 * ids = [bos] + enc(prompt) + enc(response) + [eos] (no bos when the tokenizer adds none), cut
 * on the right to seqLen, padded on the right. targetMask[j] = 1 iff token j is a response
 * token or the eos that survived the cut.
 * The loss is the mean over j >= 1 with targetMask[j] = 1 of CE(logits[j − 1], ids[j]).
 * @module
 */
import type { Tokenizer } from "../../model/tokenizer.ts";
import { DataError } from "./errors.ts";
import type { MicroBatch } from "../../model/batch.ts";

/** One example as the model sees it. */
export interface EncodedExample {
  ids: Int32Array;
  targetMask: Uint8Array;
  /** Tokens before padding (at most seqLen). */
  length: number;
  /** True when the example was longer than seqLen and lost tokens on the right. */
  truncated: boolean;
}

export function encodeExample(
  tok: Tokenizer,
  example: { prompt: string; response: string },
  seqLen: number,
): EncodedExample {
  checkSeqLen(seqLen);
  const prompt = tok.encode(example.prompt);
  const response = tok.encode(example.response);
  const full = (tok.bos === null ? 0 : 1) + prompt.length + response.length + 1;
  const ids = new Int32Array(seqLen).fill(tok.pad);
  const targetMask = new Uint8Array(seqLen);
  let j = 0;
  const put = (id: number, target: 0 | 1) => {
    if (j < seqLen) {
      ids[j] = id;
      targetMask[j] = target;
    }
    j++;
  };
  if (tok.bos !== null) put(tok.bos, 0);
  for (const id of prompt) put(id, 0);
  for (const id of response) put(id, 1);
  put(tok.eos, 1);
  return { ids, targetMask, length: Math.min(full, seqLen), truncated: full > seqLen };
}

/**
 * The ids a generation starts from: [bos] + enc(prompt), the same prefix that training puts
 * before the response (no bos when the tokenizer adds none).
 */
export function promptIds(tok: Tokenizer, prompt: string): number[] {
  const ids = tok.encode(prompt);
  return tok.bos === null ? ids : [tok.bos, ...ids];
}

/** Every example of a data set, encoded once. */
export function encodeExamples(
  tok: Tokenizer,
  examples: readonly { prompt: string; response: string }[],
  seqLen: number,
): EncodedExample[] {
  return examples.map((e) => encodeExample(tok, e, seqLen));
}

/** Rows `indices` of `encoded`, in that order, as one micro-batch. */
export function packMicroBatch(
  encoded: readonly EncodedExample[],
  indices: readonly number[],
  seqLen: number,
): MicroBatch {
  checkSeqLen(seqLen);
  const rows = indices.length;
  const ids = new Int32Array(rows * seqLen);
  const targetMask = new Uint8Array(rows * seqLen);
  let targets = 0;
  for (let r = 0; r < rows; r++) {
    const ex = encoded[indices[r]];
    if (ex === undefined) {
      throw new DataError(`example ${indices[r]} does not exist (data set of ${encoded.length})`);
    }
    if (ex.ids.length !== seqLen) {
      throw new DataError(`example ${indices[r]} has ${ex.ids.length} tokens, expected ${seqLen}`);
    }
    ids.set(ex.ids, r * seqLen);
    targetMask.set(ex.targetMask, r * seqLen);
    for (let j = 1; j < seqLen; j++) targets += ex.targetMask[j];
  }
  return { ids, targetMask, targets, rows, seqLen };
}

function checkSeqLen(seqLen: number): void {
  if (!Number.isInteger(seqLen) || seqLen < 1) {
    throw new DataError(`seq_len must be an integer >= 1, got ${seqLen}`);
  }
}

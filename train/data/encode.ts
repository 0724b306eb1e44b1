/**
 * Token ids and loss masks of examples (docs/architecture.md §4), and their packing into micro-batches.
 *
 * A prompt/response example: ids = [bos] + enc(prompt) + enc(response) + [eos] (no bos when the
 * tokenizer adds none), cut on the right to seqLen, padded on the right. targetMask[j] = 1 iff
 * token j is a response token or the eos that survived the cut. A conversation (or, with
 * `chatTemplate`, a prompt/response example as a user turn and an assistant turn): the tokens of
 * its chat-template rendering, targets on the assistant turns (chat.ts), cut and padded alike.
 * The loss is the mean over j >= 1 with targetMask[j] = 1 of CE(logits[j − 1], ids[j]).
 * @module
 */
import type { Tokenizer } from "../../model/tokenizer.ts";
import type { ChatFormat, ChatMessage } from "./chat.ts";
import { ChatTemplateError, DataError } from "./errors.ts";
import type { Example } from "./jsonl.ts";
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

/** A conversation's rendering as one example: its targets, cut on the right and padded. */
export function encodeChatExample(
  chat: ChatFormat,
  pad: number,
  messages: readonly ChatMessage[],
  seqLen: number,
): EncodedExample {
  checkSeqLen(seqLen);
  const conv = chat.encode(messages);
  const n = Math.min(conv.ids.length, seqLen);
  const ids = new Int32Array(seqLen).fill(pad);
  const targetMask = new Uint8Array(seqLen);
  ids.set(conv.ids.slice(0, n));
  targetMask.set(conv.targets.subarray(0, n));
  return { ids, targetMask, length: n, truncated: conv.ids.length > seqLen };
}

/**
 * The ids a generation starts from: [bos] + enc(prompt), the same prefix that training puts
 * before the response (no bos when the tokenizer adds none).
 */
export function promptIds(tok: Tokenizer, prompt: string): number[] {
  const ids = tok.encode(prompt);
  return tok.bos === null ? ids : [tok.bos, ...ids];
}

/** What encoding reads of an example. */
export type ExampleText = Pick<Example, "prompt" | "response" | "messages">;

/** How the examples of a data set become tokens. */
export interface ExampleFormat {
  /** The model's chat template: needed by conversations and by `chatTemplate`. */
  chat?: ChatFormat | null;
  /** Prompt/response examples through the chat template too, as a user and an assistant turn. */
  chatTemplate?: boolean;
  /** For errors: the data file and the line of each example. */
  source?: string;
  lines?: readonly number[];
}

/** The conversation an example is under the chat template, or null for plain prompt/response. */
export function conversationOf(e: ExampleText, chatTemplate = false): ChatMessage[] | null {
  if (e.messages !== undefined) return e.messages;
  if (!chatTemplate) return null;
  return [{ role: "user", content: e.prompt }, { role: "assistant", content: e.response }];
}

/**
 * Every example of a data set, encoded once. A conversation with no chat template, or one the
 * template fails on, is a ChatTemplateError naming the data file and line.
 */
export function encodeExamples(
  tok: Tokenizer,
  examples: readonly ExampleText[],
  seqLen: number,
  format: ExampleFormat = {},
): EncodedExample[] {
  return examples.map((e, i) => {
    const conv = conversationOf(e, format.chatTemplate);
    if (conv === null) return encodeExample(tok, e, seqLen);
    const where = `${format.source ?? "data"}:${format.lines?.[i] ?? i + 1}`;
    if (!format.chat) {
      throw new ChatTemplateError(
        `${where}: ${e.messages ? "a conversation" : "--chat-template"} needs the model's ` +
          "chat template, and the model has none",
        "none",
      );
    }
    try {
      return encodeChatExample(format.chat, tok.pad, conv, seqLen);
    } catch (err) {
      if (!(err instanceof ChatTemplateError)) throw err;
      throw new ChatTemplateError(`${where}: ${err.message}`, err.template);
    }
  });
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

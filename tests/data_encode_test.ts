import assert from "node:assert/strict";
import { ByteTokenizer } from "../model/tokenizer.ts";
import {
  DataError,
  encodeExample,
  encodeExamples,
  packMicroBatch,
  promptIds,
} from "../train/data/mod.ts";
import { Rng } from "../core/rng.ts";

const tok = new ByteTokenizer();
// Byte ids written out by hand: 'a' = 97 -> 100, 'b' -> 101, 'c' -> 102, 'é' = C3 A9.
const A = 100, B = 101, C = 102;

Deno.test("encode: [bos] prompt response [eos], right padding, mask on response and eos", () => {
  const e = encodeExample(tok, { prompt: "ab", response: "c" }, 8);
  assert.deepEqual(Array.from(e.ids), [1, A, B, C, 2, 0, 0, 0]);
  assert.deepEqual(Array.from(e.targetMask), [0, 0, 0, 1, 1, 0, 0, 0]);
  assert.equal(e.length, 5);
  assert.equal(e.truncated, false);
  assert.ok(e.ids instanceof Int32Array && e.targetMask instanceof Uint8Array);
});

Deno.test("encode: multi-byte response tokens are all targets; empty response keeps eos", () => {
  const e = encodeExample(tok, { prompt: "a", response: "é" }, 6);
  assert.deepEqual(Array.from(e.ids), [1, A, 0xc3 + 3, 0xa9 + 3, 2, 0]);
  assert.deepEqual(Array.from(e.targetMask), [0, 0, 1, 1, 1, 0]);
  const empty = encodeExample(tok, { prompt: "ab", response: "" }, 5);
  assert.deepEqual(Array.from(empty.ids), [1, A, B, 2, 0]);
  assert.deepEqual(Array.from(empty.targetMask), [0, 0, 0, 1, 0]);
  const none = encodeExample(tok, { prompt: "", response: "" }, 2);
  assert.deepEqual(Array.from(none.ids), [1, 2]);
  assert.deepEqual(Array.from(none.targetMask), [0, 1]);
});

Deno.test("encode: truncation on the right drops eos first, then response tokens", () => {
  const fits = encodeExample(tok, { prompt: "ab", response: "c" }, 5);
  assert.deepEqual(Array.from(fits.ids), [1, A, B, C, 2]);
  assert.equal(fits.truncated, false);
  const noEos = encodeExample(tok, { prompt: "ab", response: "c" }, 4);
  assert.deepEqual(Array.from(noEos.ids), [1, A, B, C]);
  assert.deepEqual(Array.from(noEos.targetMask), [0, 0, 0, 1]);
  assert.equal(noEos.truncated, true);
  assert.equal(noEos.length, 4);
  const promptOnly = encodeExample(tok, { prompt: "ab", response: "c" }, 3);
  assert.deepEqual(Array.from(promptOnly.ids), [1, A, B]);
  assert.deepEqual(Array.from(promptOnly.targetMask), [0, 0, 0]);
  assert.throws(() => encodeExample(tok, { prompt: "", response: "" }, 0), DataError);
});

Deno.test("encode: on random text, targets are exactly enc(response) + eos after the prompt", () => {
  const rng = new Rng(11);
  const alphabet = "abcxyz 019+=?\nßé€😀";
  const text = (n: number) => {
    let s = "";
    for (let i = 0; i < n; i++) s += [...alphabet][rng.int([...alphabet].length)];
    return s;
  };
  for (let trial = 0; trial < 200; trial++) {
    const prompt = text(rng.int(12));
    const response = text(rng.int(12));
    const seqLen = 1 + rng.int(40);
    const e = encodeExample(tok, { prompt, response }, seqLen);
    const p = [...new TextEncoder().encode(prompt)].map((b) => b + 3);
    const r = [...new TextEncoder().encode(response)].map((b) => b + 3);
    const full = [1, ...p, ...r, 2];
    const kept = full.slice(0, seqLen);
    const expectedIds = [...kept, ...new Array(seqLen - kept.length).fill(0)];
    const expectedMask = expectedIds.map((_, j) => j < kept.length && j >= 1 + p.length ? 1 : 0);
    assert.deepEqual(Array.from(e.ids), expectedIds);
    assert.deepEqual(Array.from(e.targetMask), expectedMask);
  }
});

Deno.test("packMicroBatch: rows in the given order and the count of j >= 1 targets", () => {
  const enc = encodeExamples(tok, [
    { prompt: "ab", response: "c" }, // 2 targets
    { prompt: "a", response: "bc" }, // 3 targets
    { prompt: "abc", response: "abc" }, // cut at 6: 'a','b' of the response
  ], 6);
  const mb = packMicroBatch(enc, [2, 0], 6);
  assert.equal(mb.rows, 2);
  assert.equal(mb.seqLen, 6);
  assert.deepEqual(Array.from(mb.ids), [1, A, B, C, A, B, 1, A, B, C, 2, 0]);
  assert.deepEqual(Array.from(mb.targetMask), [0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0]);
  assert.equal(mb.targets, 4);
  assert.equal(packMicroBatch(enc, [0, 1, 2], 6).targets, 2 + 3 + 2);
  assert.throws(() => packMicroBatch(enc, [3], 6), DataError);
  assert.throws(() => packMicroBatch(enc, [0], 7), DataError);
});

Deno.test("promptIds: the training prefix of the response", () => {
  assert.deepEqual(promptIds(tok, "ab"), [1, A, B]);
  const e = encodeExample(tok, { prompt: "ab", response: "cab" }, 16);
  const p = promptIds(tok, "ab");
  assert.deepEqual(Array.from(e.ids.slice(0, p.length)), p);
  assert.equal(e.targetMask[p.length], 1);
  assert.equal(e.targetMask[p.length - 1], 0);
});

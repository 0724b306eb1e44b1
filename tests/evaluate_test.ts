// Benchmark evaluation: which examples and limits prepareEval picks (prompt ids by hand, the
// default max_new_tokens, the per-task subset), scoring of hand-made generations (eos cut,
// trimming, per-task and overall means), and evaluateModel on a random model folder written
// here, whose answers are checked against the float64 reference's greedy decoding, and the
// same answers when the prompts are shared out over two models and scored together.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import type { LlamaConfig } from "../model/config.ts";
import { referenceGreedy } from "../model/reference/llama.ts";
import { LlamaGpu } from "../model/llama.ts";
import { loadModelFolder, saveModelFolder } from "../model/safetensors.ts";
import { ByteTokenizer } from "../model/tokenizer.ts";
import { DataFileError } from "../train/data/errors.ts";
import { evalSubset } from "../train/eval/score.ts";
import {
  evaluateModel,
  EvaluationError,
  generateAnswers,
  prepareEval,
  scoreGenerations,
  stopIdsOf,
} from "../train/eval/evaluate.ts";
import type { Example } from "../train/data/jsonl.ts";
import { randomWeights, Rng } from "./support/model_gpu.ts";

const tok = new ByteTokenizer();
/** Byte ids by hand: byte b is id b + 3. */
const ids = (bytes: number[]) => bytes.map((b) => b + 3);

const EXAMPLES: Example[] = [
  { prompt: "Q: 1+1\nA: ", response: "2", task: "arith" },
  { prompt: "Hi", response: " hello ", task: "strings" },
  { prompt: "é", response: "ü", task: "arith" },
  { prompt: "x", response: "no", task: "strings" },
  { prompt: "y", response: "10", task: "arith" },
];

Deno.test("prepareEval: prompt ids, default limits, subsets", () => {
  const p = prepareEval(tok, EXAMPLES, { all: true });
  assert.deepEqual(p.items.map((it) => it.index), [0, 1, 2, 3, 4]);
  // [bos] + bytes of "Q: 1+1\nA: ".
  assert.deepEqual(
    p.items[0].prompt,
    [1, ...ids([0x51, 0x3a, 0x20, 0x31, 0x2b, 0x31, 0x0a, 0x41, 0x3a, 0x20])],
  );
  assert.deepEqual(p.items[2].prompt, [1, ...ids([0xc3, 0xa9])]);
  assert.deepEqual(p.items.map((it) => it.reference), ["2", " hello ", "ü", "no", "10"]);
  assert.deepEqual(p.items.map((it) => it.task), ["arith", "strings", "arith", "strings", "arith"]);
  // The longest reference is " hello ", 7 tokens; 7 + 8.
  assert.equal(p.maxNewTokens, 15);
  assert.deepEqual(p.stopIds, [2]);

  const sub = prepareEval(tok, EXAMPLES, { perTask: 1, seed: 3 });
  const want = evalSubset(EXAMPLES, 1, 3);
  assert.deepEqual(sub.items.map((it) => it.index), want);
  assert.equal(sub.items.length, 2);
  assert.deepEqual(new Set(sub.items.map((it) => it.task)), new Set(["arith", "strings"]));
  const longest = Math.max(
    ...want.map((i) => new TextEncoder().encode(EXAMPLES[i].response).length),
  );
  assert.equal(sub.maxNewTokens, longest + 8);

  const fixed = prepareEval(tok, EXAMPLES, { all: true, maxNewTokens: 3, stopIds: [2, 7] });
  assert.equal(fixed.maxNewTokens, 3);
  assert.deepEqual(fixed.stopIds, [2, 7]);
  // The default subset holds at most 50 per task: here everything, in file order.
  assert.deepEqual(prepareEval(tok, EXAMPLES).items.map((it) => it.index), [0, 1, 2, 3, 4]);

  assert.throws(() => prepareEval(tok, []), EvaluationError);
  assert.throws(() => prepareEval(tok, EXAMPLES, { maxNewTokens: 0 }), EvaluationError);
  assert.throws(() => prepareEval(tok, EXAMPLES, { maxNewTokens: 2.5 }), EvaluationError);
  assert.throws(() => prepareEval(tok, EXAMPLES, { perTask: 0 }), Error);
});

Deno.test("stop ids come from config.json, every listed eos id", () => {
  const base = { eos_token_id: 2 } as LlamaConfig;
  assert.deepEqual(stopIdsOf(base, tok), [2]);
  assert.deepEqual(stopIdsOf({ ...base, eos_token_ids: [2, 9] }, tok), [2, 9]);
  assert.deepEqual(stopIdsOf({ ...base, eos_token_id: null }, tok), [tok.eos]);
});

Deno.test("scoreGenerations: cut at the first stop id, trim, exact match, task means", () => {
  const p = prepareEval(tok, EXAMPLES, { all: true, stopIds: [2, 99] });
  const enc = (s: string) => [...new TextEncoder().encode(s)].map((b) => b + 3);
  const generated = [
    [...enc(" 2 "), 2], // trimmed "2": correct
    enc("hello\n"), // no stop (ran to the limit), trimmed on both sides: correct
    [...enc("ü"), 2, ...enc("x")], // tokens after the eos do not count: correct
    [...enc("n"), 99, ...enc("o")], // the second stop id ends it too: "n", wrong
    [2], // empty answer: wrong
  ];
  const { score, predictions } = scoreGenerations(tok, p, generated);
  assert.deepEqual(predictions.map((x) => x.prediction), ["2", "hello", "ü", "n", ""]);
  assert.deepEqual(predictions.map((x) => x.correct), [true, true, true, false, false]);
  assert.deepEqual(predictions.map((x) => x.index), [0, 1, 2, 3, 4]);
  assert.equal(score.n, 5);
  assert.equal(score.correct, 3);
  assert.equal(score.overall, 3 / 5);
  assert.deepEqual(score.tasks, { arith: 2 / 3, strings: 1 / 2 });
  assert.deepEqual(score.counts, {
    arith: { n: 3, correct: 2 },
    strings: { n: 2, correct: 1 },
  });
  assert.throws(() => scoreGenerations(tok, p, generated.slice(1)), EvaluationError);
});

const TINY: LlamaConfig = {
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 259,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  max_position_embeddings: 64,
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
  pad_token_id: 0,
};

Deno.test("evaluateModel on a random model folder agrees with the reference's greedy answers", async () => {
  const dir = await Deno.makeTempDir({ prefix: "evaluate-test-" });
  const gpu = await Gpu.open();
  try {
    const rng = new Rng(5);
    const weights = randomWeights(TINY, rng);
    // Make eos likely enough that some answers stop before the limit.
    const lm = weights.get("lm_head.weight")!.data;
    for (let c = 0; c < TINY.hidden_size; c++) lm[2 * TINY.hidden_size + c] *= 3;
    await saveModelFolder(dir, TINY, weights);

    const prompts = ["Q: 3+4\nA: ", "Q: Reverse abc\nA: ", "ab", "Q: x\nA: ", "hello", "Q: 9\n"];
    const maxNew = 6;
    let stopped = 0;
    const answers = prompts.map((prompt) => {
      const out = referenceGreedy(TINY, weights, [1, ...tok.encode(prompt)], maxNew, [2]);
      const end = out.indexOf(2);
      if (end >= 0) stopped++;
      const bytes = (end < 0 ? out : out.slice(0, end)).filter((id) => id >= 3).map((id) => id - 3);
      return new TextDecoder().decode(Uint8Array.from(bytes)).trim();
    });
    console.log(`reference answers: ${JSON.stringify(answers)}`);
    assert.ok(stopped > 0 && stopped < prompts.length, "some answers end at eos, some run out");
    // Every other example's reference is the model's answer; the rest can never match.
    const examples = prompts.map((prompt, i) => ({
      prompt,
      response: i % 2 === 0 ? answers[i] : `\u0001never ${i}`,
      task: i < 3 ? "a" : "b",
    }));
    const data = `${dir}/test.jsonl`;
    await Deno.writeTextFile(data, examples.map((e) => JSON.stringify(e)).join("\n") + "\n");

    const result = await evaluateModel(dir, data, {
      all: true,
      maxNewTokens: maxNew,
      batchSize: 4,
      gpu,
    });
    assert.deepEqual(result.predictions.map((p) => p.prediction), answers);
    assert.equal(result.maxNewTokens, maxNew);
    assert.equal(result.score.n, 6);
    assert.equal(result.score.correct, 3);
    assert.deepEqual(result.score.tasks, { a: 2 / 3, b: 1 / 3 });
    assert.equal(result.score.overall, 0.5);

    // The default subset and limit: everything (fewer than 50 per task), longest reference + 8.
    const byDefault = await evaluateModel(dir, data, { gpu });
    assert.equal(byDefault.score.n, 6);
    const longest = Math.max(...examples.map((e) => tok.encode(e.response).length));
    assert.equal(byDefault.maxNewTokens, longest + 8);

    // A distributed driver's way: prepare once, decode strided shares on separate models,
    // put the answers back in item order and score them once.
    const folder = await loadModelFolder(dir);
    const prepared = prepareEval(tok, examples, { all: true, maxNewTokens: maxNew });
    const merged: number[][] = new Array(prepared.items.length);
    for (let k = 0; k < 2; k++) {
      const model = await LlamaGpu.create(gpu, folder.config, folder.tensors, {
        maxRows: 1,
        seqLen: 1,
        gradients: "none",
      });
      try {
        const mine = prepared.items.map((_, i) => i).filter((i) => i % 2 === k);
        const got = await generateAnswers(model, prepared, mine.map((i) => prepared.items[i]), {
          batchSize: 2,
        });
        mine.forEach((i, j) => merged[i] = got[j]);
      } finally {
        model.close();
      }
    }
    const shared = scoreGenerations(tok, prepared, merged);
    assert.deepEqual(shared.predictions, result.predictions);
    assert.deepEqual(shared.score, result.score);

    await assert.rejects(() => evaluateModel(`${dir}/missing`, data, { gpu }), EvaluationError);
    await assert.rejects(() => evaluateModel(data, data, { gpu }), EvaluationError);
    await assert.rejects(() => evaluateModel(dir, `${dir}/none.jsonl`, { gpu }), DataFileError);
    const empty = await Deno.makeTempDir({ dir });
    await assert.rejects(() => evaluateModel(empty, data, { gpu }), /no config\.json/);
  } finally {
    gpu.close();
    await Deno.remove(dir, { recursive: true });
  }
});

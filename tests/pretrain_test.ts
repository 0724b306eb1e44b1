// Pretraining: the document stream and windows on hand-checked inputs, the corpus's documents,
// the initialisation, option checks, and a short real run on lavapipe that lowers the loss,
// writes a model folder that loads back (its held-out loss recomputed from the files and by the
// float64 reference) and gives the same bits when run again.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { expectedTensors } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import { referenceForward } from "../model/reference/llama.ts";
import { loadModelFolder } from "../model/safetensors.ts";
import { ByteTokenizer, loadTokenizer } from "../model/tokenizer.ts";
import {
  checkPretrainOptions,
  corpusDocuments,
  documentStream,
  heldOutBatches,
  heldOutLoss,
  initWeights,
  pretrain,
  PRETRAIN_DEFAULTS,
  PretrainError,
  pretrainModelConfig,
  type PretrainOptions,
  type PretrainRecord,
  sampleWindows,
} from "../train/pretrain/pretrain.ts";
import { Rng } from "../core/rng.ts";

const tok = new ByteTokenizer();

Deno.test("document stream: [bos] doc [eos] per document", () => {
  // 'a' = 97 → 100, '\n' = 10 → 13.
  assert.deepEqual(
    [...documentStream(tok, ["ab", "", "c\nd"])],
    [1, 100, 101, 2, 1, 2, 1, 102, 13, 103, 2],
  );
});

Deno.test("corpus documents: the generated corpus's own documents, else lines", async () => {
  const lines = corpusDocuments("x\n\n  \ny\r\nz");
  assert.deepEqual(lines, { docs: ["x", "y", "z"], source: "lines" });
  assert.throws(() => corpusDocuments(""), PretrainError);
  assert.throws(() => corpusDocuments("\n\n"), PretrainError);
  for (const file of ["data/corpus/train.txt", "data/corpus/valid.txt"]) {
    const text = await Deno.readTextFile(file);
    const { docs, source } = corpusDocuments(text);
    assert.equal(source, "generator", file);
    assert.equal(docs.join("\n") + "\n", text);
    // Code documents span lines, so there are fewer documents than lines.
    assert.ok(docs.some((d) => d.includes("\n")));
    assert.ok(docs.length < text.split("\n").length - 1);
  }
});

Deno.test("windows: random contiguous slices for training, consecutive ones held out", () => {
  const stream = Int32Array.from({ length: 203 }, (_, i) => i);
  const rng = new Rng(3);
  const b = sampleWindows(stream, rng, 6, 10);
  assert.equal(b.rows, 6);
  assert.equal(b.seqLen, 10);
  assert.equal(b.targets, 6 * 9);
  assert.ok(b.targetMask.every((m) => m === 1));
  const starts = new Set<number>();
  for (let r = 0; r < 6; r++) {
    const s = b.ids[r * 10];
    starts.add(s);
    assert.ok(s >= 0 && s + 10 <= 203);
    for (let j = 0; j < 10; j++) assert.equal(b.ids[r * 10 + j], s + j);
  }
  assert.ok(starts.size > 1, "offsets differ");
  assert.deepEqual(sampleWindows(stream, new Rng(3), 6, 10), b, "seeded");
  assert.throws(() => sampleWindows(stream.subarray(0, 9), rng, 1, 10), PretrainError);

  const held = heldOutBatches(stream, 10, 7, 3);
  assert.deepEqual(held.map((h) => h.rows), [3, 3, 1]);
  assert.deepEqual([...held.flatMap((h) => [...h.ids])], Array.from({ length: 70 }, (_, i) => i));
  assert.equal(held[2].targets, 9);
  assert.equal(heldOutBatches(stream, 10, Infinity, 8).reduce((s, h) => s + h.rows, 0), 20);
  assert.throws(() => heldOutBatches(stream.subarray(0, 5), 10, 3, 2), PretrainError);
});

const TINY_OPTIONS: PretrainOptions = {
  ...PRETRAIN_DEFAULTS,
  steps: 60,
  batch: 8,
  seqLen: 16,
  lr: 1e-2,
  warmupRatio: 0.1,
  evalEvery: 30,
  evalWindows: 8,
  fullValid: false,
  hidden: 32,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  intermediate: 48,
  maxPositions: 16,
  seed: 9,
};

Deno.test("initialisation: matrices N(0, 0.02²), norms 1, seeded", () => {
  const config = pretrainModelConfig(TINY_OPTIONS);
  const w = initWeights(config, new Rng(4), 0.02);
  assert.deepEqual([...w.keys()], expectedTensors(config).map((s) => s.name));
  let n = 0, sum = 0, sq = 0;
  for (const [name, t] of w) {
    if (t.shape.length === 1) {
      assert.ok(t.data.every((x) => x === 1), name);
      continue;
    }
    for (const x of t.data) {
      n++;
      sum += x;
      sq += x * x;
    }
  }
  const mean = sum / n;
  const std = Math.sqrt(sq / n - mean * mean);
  assert.ok(Math.abs(mean) < 1e-3, `mean ${mean}`);
  assert.ok(Math.abs(std - 0.02) < 0.02 * 0.02, `std ${std}`);
  assert.deepEqual(initWeights(config, new Rng(4), 0.02), w);
});

Deno.test("pretrain options: clear errors", () => {
  const bad: [Partial<PretrainOptions>, RegExp][] = [
    [{ steps: 0 }, /--steps/],
    [{ heads: 3 }, /multiple of --heads/],
    [{ kvHeads: 3 }, /--kv-heads/],
    [{ seqLen: 32 }, /max_position_embeddings/],
    [{ lr: -1 }, /--lr/],
    [{ warmupRatio: 2 }, /--warmup-ratio/],
    [{ seed: 1.5 }, /--seed/],
  ];
  checkPretrainOptions(TINY_OPTIONS);
  for (const [patch, re] of bad) {
    assert.throws(() => checkPretrainOptions({ ...TINY_OPTIONS, ...patch }), re);
  }
});

Deno.test("a short pretraining run lowers the loss and writes a loadable, reproducible folder", async () => {
  const root = await Deno.makeTempDir({ prefix: "pretrain-test-" });
  const gpu = await Gpu.open();
  const log: string[] = [];
  const run = (out: string) =>
    pretrain(gpu, { ...TINY_OPTIONS, out }, {
      command: "test",
      out: (s) => log.push(s),
      isTty: false,
    });
  try {
    const out = `${root}/a`;
    const rec = await run(out);
    assert.equal(rec.train_loss.length, 60);
    assert.equal(rec.grad_norm.length, 60);
    assert.deepEqual(rec.valid_loss.map((v) => v.step), [0, 30, 60]);
    // Near-zero logits at initialisation: the loss of a uniform guess over 259 tokens.
    assert.ok(Math.abs(rec.valid_loss[0].loss - Math.log(259)) < 0.05, `${rec.valid_loss[0].loss}`);
    assert.ok(Math.abs(rec.train_loss[0] - Math.log(259)) < 0.05);
    const first = rec.valid_loss[0].loss;
    const last = rec.valid_loss[2].loss;
    assert.ok(last < 0.75 * first, `held-out loss ${first} → ${last}`);
    assert.ok(rec.final_train_loss < 0.75 * rec.train_loss[0]);
    assert.equal(rec.heldout.loss, last);
    assert.equal(rec.command, "test");
    assert.ok(log.some((l) => l.includes("held-out loss")));

    // What was written: a Hugging Face folder with the byte tokenizer, and pretrain.json.
    const raw = JSON.parse(await Deno.readTextFile(`${out}/config.json`));
    assert.deepEqual(raw.architectures, ["LlamaForCausalLM"]);
    assert.equal(raw.model_type, "llama");
    await assert.rejects(() => Deno.stat(`${out}/tokenizer.json`), Deno.errors.NotFound);
    const written: PretrainRecord = JSON.parse(await Deno.readTextFile(`${out}/pretrain.json`));
    assert.deepEqual(written, JSON.parse(JSON.stringify(rec)));
    const folder = await loadModelFolder(out);
    assert.deepEqual(folder.config, pretrainModelConfig(TINY_OPTIONS));
    assert.equal((await loadTokenizer(out, folder.config)).kind, "byte");

    // The held-out figure from the loaded files, on the GPU and by the float64 reference.
    const validText = await Deno.readTextFile(TINY_OPTIONS.valid);
    const stream = documentStream(tok, corpusDocuments(validText).docs);
    const batches = heldOutBatches(
      stream,
      rec.heldout.seq_len,
      rec.heldout.windows,
      rec.heldout.rows,
    );
    const model = await LlamaGpu.create(gpu, folder.config, folder.tensors, {
      maxRows: rec.heldout.rows,
      seqLen: rec.heldout.seq_len,
      gradients: "none",
    });
    let gpuLoss: number;
    try {
      gpuLoss = await heldOutLoss(model, batches);
    } finally {
      model.close();
    }
    assert.ok(Math.abs(gpuLoss - last) <= 1e-4 * last, `${gpuLoss} vs recorded ${last}`);
    let refSum = 0, refCount = 0;
    for (const b of batches) {
      const rows = Array.from({ length: b.rows }, (_, r) => r);
      const ref = referenceForward(folder.config, folder.tensors, {
        ids: rows.map((r) => [...b.ids.subarray(r * b.seqLen, (r + 1) * b.seqLen)]),
        targetMask: rows.map(() => Array.from({ length: b.seqLen }, () => 1)),
      });
      refSum += ref.loss * ref.targets;
      refCount += ref.targets;
    }
    const refLoss = refSum / refCount;
    assert.ok(Math.abs(gpuLoss - refLoss) <= 1e-5 * refLoss, `${gpuLoss} vs reference ${refLoss}`);

    // The same options and seed give the same bits; the folder is not overwritten by accident.
    await run(`${root}/b`);
    assert.deepEqual(
      await Deno.readFile(`${root}/b/model.safetensors`),
      await Deno.readFile(`${out}/model.safetensors`),
    );
    await assert.rejects(() => run(out), /--overwrite/);
  } finally {
    gpu.close();
    await Deno.remove(root, { recursive: true });
  }
});

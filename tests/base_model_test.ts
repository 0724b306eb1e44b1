// The shipped base model (models/base): a Hugging Face folder with the byte tokenizer that
// loads, agrees with its pretrain.json, and whose held-out loss, recomputed here from the files
// the same way pretraining computed it, is the recorded figure.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { parameterCount } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import { loadModelFolder } from "../model/safetensors.ts";
import { ByteTokenizer, loadTokenizer } from "../model/tokenizer.ts";
import {
  corpusDocuments,
  documentStream,
  heldOutBatches,
  heldOutLoss,
  type PretrainRecord,
} from "../train/pretrain/pretrain.ts";

const DIR = "models/base";

async function readRecord(): Promise<PretrainRecord> {
  return JSON.parse(await Deno.readTextFile(`${DIR}/pretrain.json`));
}

Deno.test("the shipped base model is a small Hugging Face LLaMA folder described by pretrain.json", async () => {
  const raw = JSON.parse(await Deno.readTextFile(`${DIR}/config.json`));
  assert.deepEqual(raw.architectures, ["LlamaForCausalLM"]);
  assert.equal(raw.model_type, "llama");
  assert.equal(raw.torch_dtype, "float32");
  await assert.rejects(() => Deno.stat(`${DIR}/tokenizer.json`), Deno.errors.NotFound);
  let bytes = 0;
  for await (const e of Deno.readDir(DIR)) bytes += (await Deno.stat(`${DIR}/${e.name}`)).size;
  assert.ok(bytes < 5e6, `the folder holds ${bytes} bytes`);

  const rec = await readRecord();
  const folder = await loadModelFolder(DIR);
  assert.deepEqual(folder.config, rec.config);
  assert.equal(parameterCount(folder.config), rec.parameters);
  assert.equal((await loadTokenizer(DIR, folder.config)).kind, "byte");
  for (const [name, t] of folder.tensors) {
    assert.ok(t.data.every(Number.isFinite), `${name} is finite`);
  }

  assert.match(rec.command, /examples\/pretrain\.ts/);
  assert.ok(Number.isInteger(rec.seed));
  assert.equal(rec.train_loss.length, rec.steps);
  assert.equal(rec.valid_loss[0].step, 0);
  assert.equal(rec.valid_loss.at(-1)!.step, rec.steps);
  assert.equal(rec.heldout.loss, rec.valid_loss.at(-1)!.loss);
  assert.ok(rec.valid_loss_full !== null && rec.valid_loss_full.windows > rec.heldout.windows);
  // It learned the corpus: far below the uniform guess it started from.
  assert.ok(Math.abs(rec.valid_loss[0].loss - Math.log(259)) < 0.05);
  assert.ok(rec.heldout.loss < 0.3 * rec.valid_loss[0].loss, `held-out ${rec.heldout.loss}`);
});

Deno.test("the shipped base model's held-out loss is the recorded figure", async () => {
  const rec = await readRecord();
  const folder = await loadModelFolder(DIR);
  const text = await Deno.readTextFile(rec.heldout.file);
  const stream = documentStream(new ByteTokenizer(), corpusDocuments(text).docs);
  const { seq_len, windows, rows } = rec.heldout;
  const batches = heldOutBatches(stream, seq_len, windows, rows);
  assert.equal(batches.reduce((s, b) => s + b.rows, 0), windows);
  const gpu = await Gpu.open();
  try {
    const model = await LlamaGpu.create(gpu, folder.config, folder.tensors, {
      maxRows: rows,
      seqLen: seq_len,
      gradients: "none",
    });
    try {
      const loss = await heldOutLoss(model, batches);
      console.log(`held-out loss ${loss} (recorded ${rec.heldout.loss})`);
      assert.ok(
        Math.abs(loss - rec.heldout.loss) <= 1e-4 * rec.heldout.loss,
        `${loss} vs recorded ${rec.heldout.loss}`,
      );
    } finally {
      model.close();
    }
  } finally {
    gpu.close();
  }
});

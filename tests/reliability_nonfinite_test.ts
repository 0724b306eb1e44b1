/**
 * A real worker produces a non-finite contribution: the tiny model's embedding row of one byte
 * ("*", in 3 of the 64 training examples) is set to +Inf, so exactly the steps whose batches
 * hold such an example give NaN on the worker that trains on it. `--on-nonfinite stop` ends the
 * run at the first of them with an error naming the step, the worker and the tensor;
 * `--on-nonfinite skip` drops exactly those steps (rolled back and replayed, so that no
 * optimizer state keeps the NaN) and every other step trains normally. Each worker whose loss is
 * NaN is an event: logged with the step and the worker, and listed in report.json.
 */
import assert from "node:assert/strict";
import { runFinetune } from "../actors/job.ts";
import { loadModelFolder, saveModelFolder } from "../model/safetensors.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { BatchPlan } from "../train/data/batching.ts";
import { encodeExamples } from "../train/data/encode.ts";
import { loadJsonl } from "../train/data/jsonl.ts";
import { readReportJson } from "../train/report/report.ts";
import { adaptableLinears } from "../model/config.ts";
import { tinyOptions, writeTinySetup } from "./support/tiny_run.ts";
import { leftovers, newTag, runCli, tinyArgs } from "./support/faults.ts";

const STEPS = 8;
const POISON = "*";

/**
 * Poisons the embedding of POISON; returns the steps whose batches contain it, and the workers
 * whose shares do, per the plan.
 */
async function poison(
  dir: string,
): Promise<{ bad: number[]; losses: { step: number; worker: number }[] }> {
  const model = await loadModelFolder(`${dir}/model`);
  const tok = await loadTokenizer(`${dir}/model`, model.config);
  const [id] = tok.encode(POISON);
  const emb = model.tensors.get("model.embed_tokens.weight")!;
  const h = model.config.hidden_size;
  emb.data.fill(Infinity, id * h, (id + 1) * h);
  await saveModelFolder(`${dir}/model`, model.config, model.tensors);

  const o = tinyOptions(dir, { maxSteps: STEPS });
  const data = await loadJsonl(o.data);
  const encoded = encodeExamples(tok, data.examples, o.seqLen);
  const plan = new BatchPlan({
    numExamples: encoded.length,
    batchSize: o.batchSize,
    workers: o.workers,
    microBatch: o.microBatch,
    epochs: o.epochs,
    maxSteps: STEPS,
    shuffle: o.shuffle,
    seed: o.seed,
  });
  const poisoned = (r: number) => encoded[r].ids.subarray(0, encoded[r].length).includes(id);
  const bad: number[] = [];
  const losses: { step: number; worker: number }[] = [];
  for (let t = 0; t < STEPS; t++) {
    plan.step(t).workers.forEach((w, k) => {
      if (w.microBatches.flat().some(poisoned)) losses.push({ step: t, worker: k });
    });
    if (losses.at(-1)?.step === t) bad.push(t);
  }
  return { bad, losses };
}

Deno.test("non-finite contributions: --on-nonfinite stop ends the run clearly, skip drops exactly those steps", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-nan-" });
  const tag = newTag();
  try {
    await writeTinySetup(dir);
    const { bad, losses } = await poison(dir);
    assert.ok(bad.length >= 1 && bad.length < STEPS, `poisoned steps ${bad}`);

    const stop = await runCli(
      tinyArgs(dir, `${dir}/stop`, STEPS, ["--on-nonfinite", "stop", "--checkpoint-every", "2"]),
      tag,
    );
    assert.equal(stop.code, 1, stop.stderr);
    assert.match(
      stop.stderr,
      new RegExp(
        `finetune: TrainingError: step ${bad[0]}: worker \\d sent NaN in d[AB] of ` +
          `model\\.layers\\.\\d\\.[a-z_.]+ \\(element \\d+\\) \\(--on-nonfinite stop\\)`,
      ),
    );

    const log: string[] = [];
    const o = tinyOptions(dir, {
      out: `${dir}/skip`,
      eval: null,
      maxSteps: STEPS,
      checkpointEvery: 2,
      onNonfinite: "skip",
    });
    const [report] = await runFinetune(o, {
      log: (l) => log.push(l),
      progress: (t) => log.push(t),
      isTty: false,
    });
    const disk = await readReportJson(`${o.out}/report.json`);
    assert.deepEqual(disk.steps.map((s) => s.step), [0, 1, 2, 3, 4, 5, 6, 7]);
    const skipped = disk.steps.filter((s) => (s as { skipped?: string }).skipped).map((s) =>
      s.step
    );
    assert.deepEqual(skipped, bad, "exactly the steps holding the poisoned byte are dropped");
    for (const s of disk.steps) {
      if (bad.includes(s.step)) {
        assert.equal(s.loss, null);
        assert.match((s as { skipped?: string }).skipped!, /worker \d sent NaN in d[AB] of /);
      } else {
        assert.ok(Number.isFinite(s.loss), `step ${s.step} trained (loss ${s.loss})`);
      }
    }
    assert.equal((report as { recoveries?: number }).recoveries, 0, "drops are not failures");
    // Every NaN loss is an event: reported once per step and worker, and logged.
    assert.deepEqual(disk.nonfinite_losses, losses);
    assert.equal(disk.nonfinite_loss_count, losses.length);
    const text = log.join("\n");
    console.log(
      `  poisoned steps ${bad.join(", ")}; stop: ${stop.stderr.trim().split("\n").at(-1)}`,
    );
    console.log(
      text.split("\n").filter((l) => /drop|generation|not finite/.test(l)).map((l) => `  | ${l}`)
        .join("\n"),
    );
    for (const { step, worker } of losses) {
      assert.match(text, new RegExp(`step ${step}: the loss of worker ${worker} is not finite`));
    }
    for (const t of bad) {
      assert.match(text, new RegExp(`step ${t}: worker \\d sent NaN .*dropping the step`));
      assert.match(text, new RegExp(`step ${t} dropped \\(--on-nonfinite skip\\)`));
    }
    // The adapted weights trained and stayed finite.
    const final = await loadModelFolder(o.out);
    const base = await loadModelFolder(`${dir}/model`);
    for (const l of adaptableLinears(final.config)) {
      const w = final.tensors.get(l.name)!.data;
      assert.ok(w.every(Number.isFinite), `${l.name} is finite`);
      assert.ok(w.some((v, i) => v !== base.tensors.get(l.name)!.data[i]), `${l.name} trained`);
    }
    assert.deepEqual(await leftovers(tag), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

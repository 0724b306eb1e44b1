/**
 * Fine-tuning learns: a short run of the whole job (`--compare`, every method, real worker
 * processes on lavapipe) on data with a pattern lowers the loss on held-out examples, ones it
 * never trained on. The held-out loss is computed by the float64 reference model on the base
 * weights and on the weights each method exported.
 */
import assert from "node:assert/strict";
import { runFinetune } from "../actors/job.ts";
import type { LlamaConfig } from "../model/config.ts";
import { referenceForward } from "../model/reference/llama.ts";
import { type HostTensor, loadModelFolder, saveModelFolder } from "../model/safetensors.ts";
import { ByteTokenizer } from "../model/tokenizer.ts";
import { encodeExample } from "../train/data/encode.ts";
import { initWeights } from "../train/pretrain/pretrain.ts";
import { METHODS } from "../train/methods/registry.ts";
import { Rng } from "../core/rng.ts";
import { TINY_CONFIG, tinyOptions } from "./support/tiny_run.ts";

const quiet = { log: () => {}, isTty: false, progress: () => {} };
const SEQ = 16;
/** The least drop of the held-out loss, in nats, that counts as learning (a third of the least seen). */
const MIN_DROP = 0.25;

/**
 * The pattern: the prompt is a word of 3 to 6 letters from "abcdef" and "=", the response the
 * same word in capitals. Only a model that learned it predicts the response well.
 */
function makeExamples(rng: Rng, n: number, avoid: ReadonlySet<string> = new Set()) {
  const out: { prompt: string; response: string }[] = [];
  const seen = new Set(avoid);
  while (out.length < n) {
    const len = 3 + rng.int(4);
    let word = "";
    for (let i = 0; i < len; i++) word += "abcdef"[rng.int(6)];
    if (seen.has(word)) continue;
    seen.add(word);
    out.push({ prompt: `${word}=`, response: word.toUpperCase() });
  }
  return out;
}

/** The mean cross-entropy over every response token (and eos) of `examples`, in float64. */
function heldOutLoss(
  config: LlamaConfig,
  weights: ReadonlyMap<string, HostTensor>,
  examples: readonly { prompt: string; response: string }[],
): number {
  const tok = new ByteTokenizer();
  const enc = examples.map((e) => encodeExample(tok, e, SEQ));
  const { loss, targets } = referenceForward(config, weights, {
    ids: enc.map((e) => [...e.ids]),
    targetMask: enc.map((e) => [...e.targetMask]),
  });
  assert.ok(targets > 0);
  return loss;
}

Deno.test("fine-tuning with every method lowers the loss on held-out examples", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-heldout-" });
  try {
    const base = initWeights(TINY_CONFIG, new Rng(5), 0.08);
    await saveModelFolder(`${dir}/model`, TINY_CONFIG, base);
    const rng = new Rng(17);
    const train = makeExamples(rng, 64);
    const heldOut = makeExamples(rng, 16, new Set(train.map((e) => e.prompt.slice(0, -1))));
    for (const e of heldOut) assert.ok(!train.some((t) => t.prompt === e.prompt), e.prompt);
    const jsonl = (xs: typeof train) => xs.map((x) => JSON.stringify(x)).join("\n") + "\n";
    await Deno.writeTextFile(`${dir}/train.jsonl`, jsonl(train));

    const o = tinyOptions(dir, {
      compare: true,
      eval: null,
      seqLen: SEQ,
      maxSteps: 16,
      lr: 2e-2,
      warmupRatio: 0.1,
    });
    await runFinetune(o, quiet);

    // Observed: from 5.76 to 5.04 (hd-pissa), 4.85 (pissa), 4.91 (lora), 4.40 (full).
    const before = heldOutLoss(TINY_CONFIG, base, heldOut);
    const after: Record<string, number> = {};
    for (const method of METHODS) {
      const tuned = await loadModelFolder(`${o.out}/${method}`);
      after[method] = heldOutLoss(tuned.config, tuned.tensors, heldOut);
    }
    for (const method of METHODS) {
      assert.ok(
        after[method] < before - MIN_DROP,
        `${method}: held-out loss ${after[method].toFixed(3)} after, ${before.toFixed(3)} before`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

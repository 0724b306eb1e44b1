// Pretrains the base model from scratch on one worker and writes a Hugging Face-style model
// folder (config.json, model.safetensors, byte tokenizer) with pretrain.json beside it.
//
//   deno task pretrain --out models/base --steps 6000 --seed 1
//
// Every size and optimizer setting is a flag (see --help); the defaults make the shipped model.
import { defineFlags } from "../cli/flags.ts";
import { Gpu } from "../gpu/mod.ts";
import {
  pretrain,
  PRETRAIN_DEFAULTS,
  PretrainError,
  type PretrainOptions,
} from "../train/pretrain/pretrain.ts";

const d = PRETRAIN_DEFAULTS;
const DATA = "data and output";
const OPTIM = "optimisation";
const EVAL = "held-out loss";
const SIZE = "model";

const FLAGS = defineFlags({
  name: "pretrain",
  about: "Pretrains the base model from scratch on one worker and writes a model folder.",
  usage: "deno task pretrain [flags]",
  groups: [DATA, OPTIM, EVAL, SIZE],
  flags: {
    out: {
      type: "string",
      default: d.out,
      metavar: "DIR",
      help: "model folder to write",
      group: DATA,
    },
    overwrite: { type: "boolean", help: "replace a model already in --out", group: DATA },
    corpus: {
      type: "string",
      default: d.corpus,
      metavar: "FILE",
      help: "training text",
      group: DATA,
    },
    valid: {
      type: "string",
      default: d.valid,
      metavar: "FILE",
      help: "held-out text",
      group: DATA,
    },
    seed: {
      type: "int",
      min: 0,
      default: d.seed,
      help: "initialisation and data order",
      group: DATA,
    },
    steps: { type: "int", min: 1, default: d.steps, help: "optimizer steps", group: OPTIM },
    batch: { type: "int", min: 1, default: d.batch, help: "windows per step", group: OPTIM },
    "seq-len": { type: "int", min: 2, default: d.seqLen, help: "tokens per window", group: OPTIM },
    lr: { type: "number", gt: 0, default: d.lr, help: "peak learning rate", group: OPTIM },
    "warmup-ratio": {
      type: "number",
      min: 0,
      max: 1,
      default: d.warmupRatio,
      help: "linear warmup share of the steps, then cosine to 0",
      group: OPTIM,
    },
    "weight-decay": {
      type: "number",
      min: 0,
      default: d.weightDecay,
      help: "AdamW decay of the matrices",
      group: OPTIM,
    },
    beta1: { type: "number", min: 0, lt: 1, default: d.beta1, help: "AdamW β1", group: OPTIM },
    beta2: { type: "number", min: 0, lt: 1, default: d.beta2, help: "AdamW β2", group: OPTIM },
    clip: {
      type: "number",
      gt: 0,
      default: d.clip,
      help: "global gradient-norm clip",
      group: OPTIM,
    },
    "eval-every": {
      type: "int",
      min: 1,
      default: d.evalEvery,
      help: "held-out loss every N steps",
      group: EVAL,
    },
    "eval-windows": {
      type: "int",
      min: 1,
      default: d.evalWindows,
      help: "held-out windows",
      group: EVAL,
    },
    "full-valid": {
      type: "boolean",
      default: d.fullValid,
      help: "skip the final loss on the whole validation text",
      group: EVAL,
    },
    hidden: { type: "int", min: 1, default: d.hidden, help: "hidden size", group: SIZE },
    layers: { type: "int", min: 1, default: d.layers, help: "decoder layers", group: SIZE },
    heads: { type: "int", min: 1, default: d.heads, help: "attention heads", group: SIZE },
    "kv-heads": {
      type: "int",
      min: 1,
      default: d.kvHeads,
      help: "key/value heads",
      group: SIZE,
    },
    intermediate: {
      type: "int",
      min: 1,
      default: d.intermediate,
      help: "MLP size",
      group: SIZE,
    },
    "tie-embeddings": {
      type: "boolean",
      default: d.tieEmbeddings,
      help: "share the embedding matrix with lm_head",
      group: SIZE,
    },
    "rope-theta": { type: "number", gt: 0, default: d.ropeTheta, help: "RoPE base", group: SIZE },
    "max-positions": {
      type: "int",
      min: 1,
      default: (o) => Math.max(d.maxPositions, o.seqLen as number),
      defaultText: `max(${d.maxPositions}, --seq-len)`,
      help: "max_position_embeddings",
      group: SIZE,
    },
    "init-std": {
      type: "number",
      gt: 0,
      default: d.initStd,
      help: "std of the initial matrices",
      group: SIZE,
    },
  },
});

async function main(): Promise<void> {
  const options: PretrainOptions = FLAGS.main().options;
  const gpu = await Gpu.open();
  try {
    await pretrain(gpu, options, {
      command: ["deno", "run", "-A", "examples/pretrain.ts", ...Deno.args].join(" "),
    });
  } finally {
    gpu.close();
  }
}

try {
  await main();
} catch (e) {
  if (!(e instanceof PretrainError)) throw e;
  console.error(`error: ${(e as Error).message}`);
  Deno.exit(1);
}

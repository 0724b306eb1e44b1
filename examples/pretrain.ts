// Pretrains the base model from scratch on one worker and writes a Hugging Face-style model
// folder (config.json, model.safetensors, byte tokenizer) with pretrain.json beside it.
//
//   deno task pretrain --out models/base --steps 6000 --seed 1
//
// Every size and optimizer setting is a flag (see --help); the defaults make the shipped model.
import { parseArgs } from "node:util";
import { Gpu } from "../gpu/mod.ts";
import {
  pretrain,
  PRETRAIN_DEFAULTS,
  PretrainError,
  type PretrainOptions,
} from "../train/pretrain/pretrain.ts";

const HELP = `deno task pretrain [flags]

  --out DIR             model folder to write (default ${PRETRAIN_DEFAULTS.out})
  --overwrite           replace a model already in --out
  --corpus FILE         training text (default ${PRETRAIN_DEFAULTS.corpus})
  --valid FILE          held-out text (default ${PRETRAIN_DEFAULTS.valid})
  --seed N              initialisation and data order (default ${PRETRAIN_DEFAULTS.seed})
  --steps N             optimizer steps (default ${PRETRAIN_DEFAULTS.steps})
  --batch N             windows per step (default ${PRETRAIN_DEFAULTS.batch})
  --seq-len N           tokens per window (default ${PRETRAIN_DEFAULTS.seqLen})
  --lr X                peak learning rate (default ${PRETRAIN_DEFAULTS.lr})
  --warmup-ratio X      linear warmup share of the steps, then cosine to 0 (default ${PRETRAIN_DEFAULTS.warmupRatio})
  --weight-decay X      AdamW decay of the matrices (default ${PRETRAIN_DEFAULTS.weightDecay})
  --beta1 X, --beta2 X  AdamW moments (default ${PRETRAIN_DEFAULTS.beta1}, ${PRETRAIN_DEFAULTS.beta2})
  --clip X              global gradient-norm clip (default ${PRETRAIN_DEFAULTS.clip})
  --eval-every N        held-out loss every N steps (default ${PRETRAIN_DEFAULTS.evalEvery})
  --eval-windows N      held-out windows (default ${PRETRAIN_DEFAULTS.evalWindows})
  --no-full-valid       skip the final loss on the whole validation text
  --hidden N --layers N --heads N --kv-heads N --intermediate N
                        model size (default ${PRETRAIN_DEFAULTS.hidden}, ${PRETRAIN_DEFAULTS.layers}, ${PRETRAIN_DEFAULTS.heads}, ${PRETRAIN_DEFAULTS.kvHeads}, ${PRETRAIN_DEFAULTS.intermediate})
  --tie-embeddings      share the embedding matrix with lm_head
  --rope-theta X        (default ${PRETRAIN_DEFAULTS.ropeTheta})
  --max-positions N     max_position_embeddings (default: max(${PRETRAIN_DEFAULTS.maxPositions}, --seq-len))
  --init-std X          std of the initial matrices (default ${PRETRAIN_DEFAULTS.initStd})
`;

/** The options the flags give, or null after printing --help. */
function parseOptions(): PretrainOptions | null {
  const { values } = parseArgs({
    args: Deno.args,
    strict: true,
    options: {
      help: { type: "boolean" },
      out: { type: "string" },
      overwrite: { type: "boolean" },
      corpus: { type: "string" },
      valid: { type: "string" },
      seed: { type: "string" },
      steps: { type: "string" },
      batch: { type: "string" },
      "seq-len": { type: "string" },
      lr: { type: "string" },
      "warmup-ratio": { type: "string" },
      "weight-decay": { type: "string" },
      beta1: { type: "string" },
      beta2: { type: "string" },
      clip: { type: "string" },
      "eval-every": { type: "string" },
      "eval-windows": { type: "string" },
      "no-full-valid": { type: "boolean" },
      hidden: { type: "string" },
      layers: { type: "string" },
      heads: { type: "string" },
      "kv-heads": { type: "string" },
      intermediate: { type: "string" },
      "tie-embeddings": { type: "boolean" },
      "rope-theta": { type: "string" },
      "max-positions": { type: "string" },
      "init-std": { type: "string" },
    },
  });

  if (values.help) {
    console.log(HELP);
    return null;
  }

  function num(flag: string, fallback: number): number {
    const v = (values as Record<string, string | boolean | undefined>)[flag];
    if (v === undefined) return fallback;
    const x = Number(v);
    if (typeof v !== "string" || v.trim() === "" || !Number.isFinite(x)) {
      throw new PretrainError(`--${flag} needs a number, got ${JSON.stringify(v)}`);
    }
    return x;
  }

  const d = PRETRAIN_DEFAULTS;
  const seqLen = num("seq-len", d.seqLen);
  return {
    out: values.out ?? d.out,
    overwrite: values.overwrite ?? false,
    corpus: values.corpus ?? d.corpus,
    valid: values.valid ?? d.valid,
    seed: num("seed", d.seed),
    steps: num("steps", d.steps),
    batch: num("batch", d.batch),
    seqLen,
    lr: num("lr", d.lr),
    warmupRatio: num("warmup-ratio", d.warmupRatio),
    weightDecay: num("weight-decay", d.weightDecay),
    beta1: num("beta1", d.beta1),
    beta2: num("beta2", d.beta2),
    clip: num("clip", d.clip),
    evalEvery: num("eval-every", d.evalEvery),
    evalWindows: num("eval-windows", d.evalWindows),
    fullValid: !(values["no-full-valid"] ?? false),
    hidden: num("hidden", d.hidden),
    layers: num("layers", d.layers),
    heads: num("heads", d.heads),
    kvHeads: num("kv-heads", d.kvHeads),
    intermediate: num("intermediate", d.intermediate),
    tieEmbeddings: values["tie-embeddings"] ?? d.tieEmbeddings,
    ropeTheta: num("rope-theta", d.ropeTheta),
    maxPositions: num("max-positions", Math.max(d.maxPositions, seqLen)),
    initStd: num("init-std", d.initStd),
  };
}

/** parseArgs reports unknown flags and missing values with an ERR_PARSE_ARGS code. */
function isArgError(e: unknown): boolean {
  const code = (e as { code?: unknown })?.code;
  return typeof code === "string" && code.startsWith("ERR_PARSE_ARGS");
}

async function main(): Promise<void> {
  const options = parseOptions();
  if (!options) return;
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
  if (!(e instanceof PretrainError) && !isArgError(e)) throw e;
  console.error(`error: ${(e as Error).message}`);
  Deno.exit(1);
}

// Exports a fine-tuned model folder as a PEFT LoRA adapter of its base model (docs/architecture.md
// §9): ΔW = W_tuned − W_base of every adapted matrix, truncated by SVD to the adapter's rank and
// written as adapter_config.json + adapter_model.safetensors (what PeftModel.from_pretrained and
// vLLM's --lora-modules read), with export_report.json (energy kept and error per matrix).
//
//   deno task export-adapter --base models/base --tuned runs/20261129-101500-hd-pissa --out adapter
import { defineFlags } from "../cli/flags.ts";
import { LINEAR_KINDS } from "../model/config.ts";
import { ConfigError } from "../model/config.ts";
import { SafetensorsError } from "../model/safetensors.ts";
import { dtypeOfTorch, SAVE_DTYPES } from "../model/half_float.ts";
import { ReportError } from "../train/report/report.ts";
import { SvdError } from "../train/linalg/svd.ts";
import { AdapterExportError } from "../train/export/errors.ts";
import { adapterSummary, exportAdapter } from "../train/export/export.ts";

const FLAGS = defineFlags({
  name: "export-adapter",
  about:
    "Writes a fine-tuned model as a PEFT LoRA adapter of its base model (truncated SVD of ΔW).",
  usage: "deno task export-adapter --tuned RUN_DIR --out DIR [flags]",
  flags: {
    base: {
      type: "string",
      default: null,
      defaultText: "the run's --model, from its report.json",
      metavar: "MODEL",
      help: "the base model folder the run started from",
    },
    tuned: {
      type: "string",
      required: true,
      nonEmpty: true,
      metavar: "RUN_DIR",
      help: "the fine-tuned model folder (a run's folder; with --compare, one method's folder)",
    },
    out: {
      type: "string",
      required: true,
      nonEmpty: true,
      metavar: "DIR",
      help: "the adapter folder to write",
    },
    rank: {
      type: "int",
      min: 1,
      default: null,
      defaultText: "the method's rank bound (2Kr, 2r, r) capped by each matrix; required for full",
      metavar: "R",
      help: "the adapter's rank for every matrix",
    },
    targets: {
      type: "list",
      choices: LINEAR_KINDS,
      minItems: 1,
      itemName: "layer",
      default: null,
      defaultText: "the run's --targets, from its report.json; else all",
      help: `comma-separated: ${LINEAR_KINDS.join(",")}`,
    },
    svd: {
      type: "enum",
      choices: ["auto", "exact", "randomized"],
      default: "auto",
      help: "auto: exact up to 1024 on the long side, randomized above",
    },
    "svd-niter": {
      type: "int",
      min: 0,
      default: 4,
      help: "power iterations of the randomized SVD",
    },
    seed: { type: "int", min: 0, default: 0, help: "seed of the randomized SVD" },
    overwrite: { type: "boolean", help: "replace the adapter files of a non-empty --out" },
    "save-dtype": {
      type: "enum",
      choices: SAVE_DTYPES,
      default: "float32",
      help: "dtype of adapter_model.safetensors (16-bit rounds to nearest even; the figures are " +
        "those of the f32 factors)",
    },
  },
});

async function baseOf(tuned: string): Promise<string> {
  let model: unknown;
  try {
    model = JSON.parse(await Deno.readTextFile(`${tuned}/report.json`))?.config?.model;
  } catch {
    model = undefined;
  }
  if (typeof model !== "string") {
    throw new AdapterExportError(
      `--tuned ${tuned} has no report.json naming its base model; pass --base MODEL`,
    );
  }
  return model;
}

async function main(): Promise<void> {
  const { options: o } = FLAGS.main();
  const base = o.base ?? await baseOf(o.tuned);
  const e = await exportAdapter({
    base,
    tuned: o.tuned,
    out: o.out,
    rank: o.rank,
    targets: o.targets.length > 0 ? o.targets : null, // an absent list flag reads as []
    svd: o.svd,
    svdNiter: o.svdNiter,
    seed: o.seed,
    overwrite: o.overwrite,
    dtype: dtypeOfTorch(o.saveDtype),
  });
  adapterSummary(e).forEach((l) => console.log(l));
  console.log(
    `wrote ${o.out}/ (adapter_config.json, adapter_model.safetensors, export_report.json)`,
  );
}

try {
  await main();
} catch (e) {
  const known = [AdapterExportError, ConfigError, SafetensorsError, ReportError, SvdError];
  if (known.some((k) => e instanceof k)) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
  throw e;
}

/**
 * The defaults that depend on the model (README, "Defaults"). The shipped model keeps the values
 * tuned for it; any other model gets a published recipe for its method and size. A flag given on
 * the command line always wins. Each value carries where it came from, printed before the run
 * and kept in `report.json` (`recipe`).
 *
 * Sources: the HD-PiSSA paper (Table 5: AdamW, batch 128, lr 2e-5 for LLaMA models and 5e-6 for
 * Mistral-7B, cosine, warmup ratio 0.03, weight decay 0, alpha = rank, all linear layers; §5.1:
 * rank 16 per device, one epoch; §4.2: W += (1/K) Σ ΔU_i; App. A.2: full fine-tuning at lr 2e-5)
 * and, for LoRA's learning rate, the QLoRA paper (Dettmers et al. 2023: 2e-4 for 7B and 13B,
 * 1e-4 for 33B and 65B). Two rules are this project's own: the rank is capped for small models
 * so that the method's check passes, and the batch is rounded up to a multiple of K × micro-batch.
 * @module
 */
import { resolve } from "node:path";
import {
  adaptableLinears,
  type LlamaConfig,
  modelType,
  parameterCount,
  parseLlamaConfig,
} from "../../model/config.ts";

/** The flags whose default the recipe decides, in the order they are shown. */
export const RECIPE_FLAGS = [
  "lr",
  "rank",
  "alpha",
  "batch-size",
  "epochs",
  "schedule",
  "warmup-ratio",
  "weight-decay",
  "aggregate",
  "workers",
] as const;
export type RecipeFlag = typeof RECIPE_FLAGS[number];

/** One value of the recipe and where it came from. */
export interface RecipeEntry {
  value: number | string;
  source: string;
}

/** The resolved recipe, keyed like `report.json`'s `config` (`batch_size`). */
export type Recipe = Record<string, RecipeEntry>;

/** The shipped model's folder. */
export const SHIPPED_MODEL: string = resolve(
  decodeURIComponent(new URL("../../models/base", import.meta.url).pathname),
);

const SHIPPED = "shipped model's tuned default";
const PAPER = "HD-PiSSA paper";

/** The values tuned for the shipped 0.79M-parameter model (what the flags defaulted to). */
const SHIPPED_VALUES: Record<Exclude<RecipeFlag, "alpha">, number | string> = {
  lr: 5e-3,
  rank: 4,
  "batch-size": 16,
  epochs: 3,
  schedule: "cosine",
  "warmup-ratio": 0.03,
  "weight-decay": 0,
  aggregate: "mean",
  workers: 4,
};

/** The rank the HD-PiSSA paper trains with (§5.1, r = 16 per device for every method). */
const PAPER_RANK = 16;
/** The global batch of the HD-PiSSA paper (Table 5). */
const PAPER_BATCH = 128;
/** Above this many parameters, QLoRA's LoRA learning rate halves (33B and 65B: 1e-4). */
const QLORA_LARGE = 20e9;

/** Whether `model` is the shipped model's folder. */
export function isShippedModel(model: string): boolean {
  return resolve(model) === SHIPPED_MODEL;
}

/** The model's config, or null when config.json cannot be read (the job reports that later). */
function readConfig(model: string): LlamaConfig | null {
  try {
    return parseLlamaConfig(JSON.parse(Deno.readTextFileSync(`${model}/config.json`)));
  } catch {
    return null;
  }
}

/** What the recipe reads of the options (resolved so far). */
type RecipeInput = Readonly<Record<string, unknown>>;

function fmt(x: number | string): string {
  if (typeof x === "string") return x;
  return x !== 0 && Math.abs(x) < 1e-2 ? x.toExponential() : String(x);
}

/**
 * The recipe's value and source for every recipe flag, as if no flag had been given: from the
 * model (`o.model`), the method, the workers, the micro-batch, the targets and the rank (for
 * alpha = rank).
 */
export function recipeFor(o: RecipeInput): Record<RecipeFlag, RecipeEntry> {
  const rank = o.rank as number;
  if (isShippedModel(o.model as string)) {
    const out = {} as Record<RecipeFlag, RecipeEntry>;
    for (const f of RECIPE_FLAGS) {
      out[f] = f === "alpha"
        ? { value: rank, source: `= rank, ${SHIPPED}` }
        : f === "workers"
        ? { value: SHIPPED_VALUES.workers, source: "flag default" }
        : { value: SHIPPED_VALUES[f], source: SHIPPED };
    }
    return out;
  }
  const method = o.method as string;
  const workers = o.workers as number;
  const config = readConfig(o.model as string);
  const params = config === null ? null : parameterCount(config);
  const mistral = config !== null && modelType(config) === "mistral";

  let lr: RecipeEntry;
  if (method === "lora") {
    lr = params !== null && params > QLORA_LARGE
      ? { value: 1e-4, source: "QLoRA paper (Dettmers et al. 2023), LoRA on 33B-65B models" }
      : { value: 2e-4, source: "QLoRA paper (Dettmers et al. 2023), LoRA on 7B-13B models" };
  } else if (mistral) {
    lr = { value: 5e-6, source: `${PAPER}, Table 5, Mistral-7B recipe` };
  } else if (method === "full") {
    lr = { value: 2e-5, source: `${PAPER}, App. A.2, full fine-tuning of LLaMA-2-7B` };
  } else {
    lr = { value: 2e-5, source: `${PAPER}, Table 5, 7B recipe (LLaMA models)` };
  }

  // Small models: the method's check needs K·r (HD-PiSSA) or r (PiSSA, LoRA) within the short
  // side of every adapted matrix.
  let rankEntry: RecipeEntry = {
    value: PAPER_RANK,
    source: `${PAPER}, §5.1, ${PAPER_RANK} ranks per device` +
      (method === "full" ? "; full fine-tuning uses it only for --export-adapter" : ""),
  };
  if (config !== null && method !== "full") {
    const targets = (o.targets as string[] | undefined) ?? undefined;
    const linears = adaptableLinears(config, targets);
    if (linears.length > 0) {
      const short = Math.min(...linears.map((l) => Math.min(l.in, l.out)));
      const k = method === "hd-pissa" ? workers : 1;
      const cap = Math.max(1, Math.floor(short / k));
      if (cap < PAPER_RANK) {
        rankEntry = {
          value: cap,
          source: `${PAPER}'s ${PAPER_RANK}, capped so that ${
            k > 1 ? "K·r" : "r"
          } fits the smallest adapted side, ${short}: this project's rule for small models`,
        };
      }
    }
  }

  const unit = workers * (o.microBatch as number);
  const batch = Math.ceil(PAPER_BATCH / unit) * unit;
  const table5 = `${PAPER}, Table 5`;
  return {
    lr,
    rank: rankEntry,
    alpha: { value: rank, source: `= rank, ${table5}` },
    "batch-size": batch === PAPER_BATCH ? { value: batch, source: table5 } : {
      value: batch,
      source: `${table5}'s ${PAPER_BATCH}, rounded up to a multiple of K × micro-batch ` +
        `= ${unit}: this project's rule`,
    },
    epochs: { value: 1, source: `${PAPER}, §5.1, one epoch` },
    schedule: { value: "cosine", source: table5 },
    "warmup-ratio": { value: 0.03, source: table5 },
    "weight-decay": { value: 0, source: table5 },
    aggregate: { value: "mean", source: `${PAPER}, §4.2, W += (1/K) Σ ΔU_i` },
    workers: {
      value: SHIPPED_VALUES.workers,
      source: "flag default; the paper used 8 GPUs, set --workers to yours",
    },
  };
}

/** The recipe's value of `flag`: what a flag not given defaults to. */
export function recipeDefault(o: RecipeInput, flag: RecipeFlag): number | string {
  return recipeFor(o)[flag].value;
}

const camel = (f: string) => f.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/**
 * The resolved recipe: each recipe flag's value in `o` and where it came from. `given` names the
 * flags given on the command line (source "flag"); any other value that differs from the
 * recipe's was set by the caller (a program that builds the options itself).
 */
export function describeRecipe(o: RecipeInput, given?: ReadonlySet<string>): Recipe {
  const r = recipeFor(o);
  const out: Recipe = {};
  for (const f of RECIPE_FLAGS) {
    const value = o[camel(f)] as number | string;
    const source = given?.has(f)
      ? "flag"
      : value !== r[f].value
      ? "set by the caller"
      : r[f].source;
    out[f.replace(/-/g, "_")] = { value, source };
  }
  return out;
}

/** The recipe as lines for the log: a heading, then `  lr 2e-5 (source)` per flag. */
export function recipeLines(o: RecipeInput, recipe: Recipe): string[] {
  const model = o.model as string;
  const what = isShippedModel(model) ? "the shipped model" : model;
  const config = isShippedModel(model) ? null : readConfig(model);
  const size = config === null
    ? ""
    : `, ${(parameterCount(config) / 1e6).toPrecision(3)}M parameters`;
  return [
    `defaults for ${what} (${o.method as string}${size}):`,
    ...Object.entries(recipe).map(([k, e]) =>
      `  ${k.replace(/_/g, "-")} ${fmt(e.value)} (${e.source})`
    ),
  ];
}

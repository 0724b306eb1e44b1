/**
 * The fine-tuning job's flags, each declared once (docs/architecture.md §2, §4, §9). Everything else comes
 * from this table: `FinetuneOptions`, the defaults, `USAGE`, the parser, the zod schema,
 * `RESUME_KEYS` (flags marked `definesRun`), the worker settings (`toWorkers`), the report's
 * key flags (`summary`) and `report.json`'s `config` (`resolvedConfig`: each flag under its own
 * name with `-` turned into `_`). Checks that need the model are in model_checks.ts.
 * @module
 */
import { resolve } from "node:path";
import { z } from "zod";
import { checkRange, defineFlags, FlagError, parseNumber } from "../../cli/flags.ts";
import { listenSchema, parseListen } from "../../cli/listen.ts";
import { LINEAR_KINDS } from "../../model/config.ts";
import { ADAPTER_CHOICES } from "../../gpu/device.ts";
import { SAVE_DTYPES } from "../../model/half_float.ts";
import { WEIGHTS_DTYPES } from "../../model/weights_dtype.ts";
import { SCHEDULES } from "../optim/schedule.ts";
import { type Method, METHODS } from "../methods/names.ts";
import { recipeDefault } from "./recipe.ts";

export { FlagError, type Method, METHODS };

/** The shipped model and benchmark, relative to the project root. */
export const PROJECT_ROOT = new URL("../../", import.meta.url);
const fromRoot = (p: string) => decodeURIComponent(new URL(p, PROJECT_ROOT).pathname);

/** `runs/<date>-<method>` under the current folder, the date as YYYYMMDD-HHMMSS (local time). */
export function defaultOutDir(method: string, now = new Date()): string {
  const p = (n: number) => String(n).padStart(2, "0");
  const stamp = `${now.getFullYear()}${p(now.getMonth() + 1)}${p(now.getDate())}-` +
    `${p(now.getHours())}${p(now.getMinutes())}${p(now.getSeconds())}`;
  return `runs/${stamp}-${method}`;
}

/** Units of `--max-shard-size`, as Hugging Face's `max_shard_size` reads them. */
const SIZE_UNITS: Record<string, number> = {
  "": 1,
  B: 1,
  KB: 1e3,
  MB: 1e6,
  GB: 1e9,
  TB: 1e12,
  KIB: 2 ** 10,
  MIB: 2 ** 20,
  GIB: 2 ** 30,
  TIB: 2 ** 40,
};

/** `5GB` (10^9), `500MiB` (2^20), `1.5GB` or a byte count, to bytes. */
export function parseByteSize(raw: string, flag: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(raw);
  const unit = m ? SIZE_UNITS[m[2].toUpperCase()] : undefined;
  if (!m || unit === undefined) {
    throw new FlagError(
      `--${flag} must be a size such as 5GB, 500MB, 2GiB or a number of bytes, got ${
        JSON.stringify(raw)
      }`,
      flag,
    );
  }
  const bytes = Math.floor(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes) || bytes < 1) {
    throw new FlagError(`--${flag} must be at least 1 byte, got ${JSON.stringify(raw)}`, flag);
  }
  return bytes;
}

const DATA = "data and model";
const METHOD = "method";
const OPTIM = "optimisation";
const EVAL = "evaluation";
const CLUSTER = "cluster, output and recovery";

export const FINETUNE_FLAGS = defineFlags({
  name: "finetune",
  about: "Fine-tune a LLaMA-family model with HD-PiSSA (or a baseline) on K GPU actors.\n\n" +
    "Defaults depend on the model: the shipped model keeps the values tuned for it, any other\n" +
    "model gets a published recipe for its method and size (lr, rank, alpha, batch-size, epochs,\n" +
    "schedule, warmup-ratio, weight-decay, aggregate; see README, Defaults). A flag given always\n" +
    "wins; the values and where each came from are printed before the run.",
  usage: "deno task finetune [flags]",
  groups: [DATA, METHOD, OPTIM, EVAL, CLUSTER],
  flags: {
    model: {
      type: "string",
      default: fromRoot("models/base"),
      defaultText: "the shipped base model, models/base",
      metavar: "DIR",
      help: "model folder: config.json, model.safetensors or shards with " +
        "model.safetensors.index.json (F32, F16, BF16) [, tokenizer.json]",
      group: DATA,
      definesRun: true,
    },
    data: {
      type: "string",
      default: fromRoot("data/bench/train.jsonl"),
      defaultText: "the shipped benchmark, data/bench/train.jsonl",
      metavar: "FILE",
      help: "training JSONL",
      group: DATA,
      definesRun: true,
    },
    eval: {
      type: "string",
      none: "none",
      default: fromRoot("data/bench/test.jsonl"),
      defaultText: "data/bench/test.jsonl",
      metavar: "FILE",
      help: 'test JSONL evaluated before and after ("none" skips evaluation)',
      group: DATA,
    },
    "prompt-field": { type: "string", default: "prompt", metavar: "NAME", help: "", group: DATA },
    "response-field": {
      type: "string",
      default: "response",
      metavar: "NAME",
      help: "",
      group: DATA,
    },
    "task-field": {
      type: "string",
      default: "task",
      metavar: "NAME",
      help: '(absent field: task "all")',
      group: DATA,
    },
    "skip-malformed": {
      type: "boolean",
      help: "skip malformed JSONL lines (counted) instead of stopping",
      group: DATA,
    },
    "messages-field": {
      type: "string",
      default: "messages",
      metavar: "NAME",
      help: "a line with this field is a conversation [{role, content}, …] (chat template)",
      group: DATA,
    },
    "chat-template": {
      type: "boolean",
      help: "prompt/response lines through the model's chat template too (user + assistant turn)",
      group: DATA,
      definesRun: true,
    },
    method: {
      type: "enum",
      choices: METHODS,
      default: "hd-pissa",
      metavar: "M",
      help: METHODS.join(" | "),
      group: METHOD,
      definesRun: true,
      toWorkers: true,
    },
    compare: {
      type: "boolean",
      help: "run all four methods on the same data; writes one folder per method",
      group: METHOD,
    },
    workers: {
      type: "int",
      default: 4,
      min: 1,
      metavar: "K",
      help: "GPU worker actors",
      group: METHOD,
      definesRun: true,
      toWorkers: true,
      summary: true,
    },
    rank: {
      type: "int",
      default: (o) => recipeDefault(o, "rank") as number,
      defaultText: "4 for the shipped model, else by recipe",
      min: 1,
      metavar: "R",
      help: "adapter rank per worker",
      group: METHOD,
      definesRun: true,
      toWorkers: true,
      summary: true,
    },
    alpha: {
      type: "number",
      gt: 0,
      default: (o) => o.rank as number,
      defaultText: "alpha = rank",
      metavar: "A",
      help: "scaling s = alpha / rank",
      group: METHOD,
      definesRun: true,
      toWorkers: true,
      summary: true,
    },
    targets: {
      type: "list",
      choices: LINEAR_KINDS,
      minItems: 1,
      itemName: "layer",
      default: LINEAR_KINDS,
      defaultText: "all",
      help: `comma-separated: ${LINEAR_KINDS.join(",")}`,
      group: METHOD,
      definesRun: true,
      toWorkers: true,
      summary: true,
    },
    mute: {
      type: "custom",
      parse: (raw: string, flag: string): "exact" | number =>
        raw === "exact"
          ? "exact"
          : checkRange(flag, parseNumber(flag, raw), { min: 1e-38, max: 1 }),
      schema: z.union([z.literal("exact"), z.number().min(1e-38).max(1)]),
      default: "exact",
      metavar: "exact|GAMMA",
      help: "exact (the γ → 0 limit) or a mute scalar γ in [1e-38, 1], e.g. 1e-16",
      group: METHOD,
      definesRun: true,
      toWorkers: true,
      summary: true,
    },
    "mute-rescale": {
      type: "enum",
      choices: ["inverse", "fixed"],
      default: "inverse",
      help: "with a numeric --mute: multiply the adapter gradients by f32(1/γ) (inverse) or by " +
        "a fixed 1e16 as the public HD-PiSSA code does (fixed; for the mute ablation)",
      group: METHOD,
      definesRun: true,
      toWorkers: true,
    },
    "slice-scale": {
      type: "enum",
      choices: ["svd", "equal"],
      default: "svd",
      help: "hd-pissa's slices: svd (A_k, B_k = sqrt(S_i/s) as in the paper) or equal (this " +
        "project's own variant, not the paper's: every slice scaled to slice 0's norm)",
      group: METHOD,
      definesRun: true,
      toWorkers: true,
    },
    aggregate: {
      type: "enum",
      choices: ["mean", "sum"],
      default: (o) => recipeDefault(o, "aggregate") as string,
      defaultText: "mean (the shipped model and the recipe)",
      help: "combine the K updates with c = 1/K (mean) or c = 1 (sum)",
      group: METHOD,
      definesRun: true,
      toWorkers: true,
      summary: true,
    },
    optimizer: {
      type: "enum",
      choices: ["adamw", "sgd"],
      default: "adamw",
      help: "",
      group: OPTIM,
      definesRun: true,
      toWorkers: true,
      summary: true,
    },
    lr: {
      type: "number",
      min: 0,
      max: 10,
      default: (o) => recipeDefault(o, "lr") as number,
      defaultText: "5e-3 for the shipped model, else by recipe",
      help: "peak learning rate",
      group: OPTIM,
      definesRun: true,
      summary: true,
    },
    "weight-decay": {
      type: "number",
      min: 0,
      max: 10,
      default: (o) => recipeDefault(o, "weight-decay") as number,
      defaultText: "0 (the shipped model and the recipe)",
      help: "decoupled weight decay",
      group: OPTIM,
      definesRun: true,
      toWorkers: true,
      summary: true,
    },
    schedule: {
      type: "enum",
      choices: SCHEDULES,
      default: (o) => recipeDefault(o, "schedule") as string,
      defaultText: "cosine (the shipped model and the recipe)",
      metavar: "S",
      help: SCHEDULES.join(" | "),
      group: OPTIM,
      definesRun: true,
      summary: true,
    },
    "warmup-ratio": {
      type: "number",
      min: 0,
      max: 1,
      default: (o) => recipeDefault(o, "warmup-ratio") as number,
      defaultText: "0.03 (the shipped model and the recipe)",
      help: "warmup steps = ceil(X * T)",
      group: OPTIM,
      definesRun: true,
      summary: true,
    },
    clip: {
      type: "number",
      min: 0,
      default: 1,
      help: "clip by global norm (0 = off)",
      group: OPTIM,
      definesRun: true,
      toWorkers: true,
      summary: true,
    },
    "batch-size": {
      type: "int",
      min: 1,
      default: (o) => recipeDefault(o, "batch-size") as number,
      defaultText: "16 for the shipped model, else by recipe",
      help: "global batch per step",
      group: OPTIM,
      definesRun: true,
      summary: true,
    },
    "micro-batch": {
      type: "int",
      min: 1,
      default: 4,
      metavar: "M",
      help: "examples per micro-batch on one worker",
      group: OPTIM,
      definesRun: true,
      summary: true,
    },
    "seq-len": {
      type: "int",
      min: 2,
      default: 64,
      help: "tokens per example",
      group: OPTIM,
      definesRun: true,
      summary: true,
    },
    recompute: {
      type: "boolean",
      help: "recompute each layer's activations in the backward, keeping only layer inputs " +
        "(less memory, same gradients, one more forward per layer)",
      group: OPTIM,
      toWorkers: true,
    },
    "weights-dtype": {
      type: "enum",
      choices: WEIGHTS_DTYPES,
      default: "f32",
      help: "dtype of the weight matrices on the device: bf16/f16 halve their memory (compute " +
        "stays f32; hd-pissa's W += ΔW is rounded once per step, the same bits on every " +
        "worker); not with --method full or --compare",
      group: OPTIM,
      definesRun: true,
      toWorkers: true,
    },
    epochs: {
      type: "int",
      min: 1,
      default: (o) => recipeDefault(o, "epochs") as number,
      defaultText: "3 for the shipped model, else by recipe",
      help: "passes over the data",
      group: OPTIM,
      definesRun: true,
      summary: true,
    },
    "max-steps": {
      type: "int",
      min: 1,
      default: null,
      help: "T; overrides --epochs",
      group: OPTIM,
      definesRun: true,
      summary: true,
    },
    seed: {
      type: "int",
      min: 0,
      default: 42,
      help: "data order and adapter init",
      group: OPTIM,
      definesRun: true,
      summary: true,
    },
    shuffle: {
      type: "boolean",
      explicit: true,
      default: true,
      help: "seeded shuffle per epoch",
      group: OPTIM,
      definesRun: true,
    },
    svd: {
      type: "enum",
      choices: ["auto", "exact", "randomized"],
      default: "auto",
      help: "adapter SVD (auto: exact up to 1024 on the short side)",
      group: METHOD,
      summary: true,
    },
    "svd-niter": {
      type: "int",
      min: 0,
      default: 4,
      help: "power iterations of the randomized SVD",
      group: METHOD,
    },
    "svd-threads": {
      type: "int",
      min: 0,
      default: 0,
      help: "threads of the adapter init's randomized SVDs (0 = one per core); same result",
      group: METHOD,
    },
    "svd-device": {
      type: "enum",
      choices: ["cpu", "gpu", "auto"],
      default: "auto",
      help: "where the init's randomized SVDs run: cpu (the driver's threads, float64), gpu (the " +
        "workers' devices, round-robin: passes over W in f32, QRs in float64; other bits than " +
        "cpu) or auto (gpu when every worker has a GPU, cpu on CPU adapters; announced)",
      group: METHOD,
    },
    nats: {
      type: "custom",
      parse: (url: string, flag: string): string => {
        if (!/^(nats|tls|ws|wss):\/\/./.test(url)) {
          throw new FlagError(
            `--${flag} must be a nats://, tls://, ws:// or wss:// URL, got ${url}`,
            flag,
          );
        }
        return url;
      },
      schema: z.string(),
      default: null,
      metavar: "URL",
      help: "join an existing cluster (nats://, tls://, ws:// or wss://) instead of a private one",
      group: CLUSTER,
    },
    "store-replicas": {
      type: "custom",
      parse: (raw: string, flag: string): number | "auto" => {
        if (raw === "auto") return "auto";
        if (!/^[1-5]$/.test(raw)) {
          throw new FlagError(`--${flag} must be 1 to 5 or "auto", got ${raw}`, flag);
        }
        return Number(raw);
      },
      schema: z.union([z.literal("auto"), z.number().int().min(1).max(5)]),
      default: "auto",
      metavar: "N|auto",
      help: "replicas of the object store (weights, checkpoints) on a --nats cluster; auto: 3 " +
        "when the cluster has 3 or more JetStream servers, else 1 (the private cluster has one)",
      group: CLUSTER,
    },
    out: {
      type: "string",
      nonEmpty: true,
      default: (o) =>
        (o.resume as string | null) ?? defaultOutDir(o.compare ? "compare" : o.method as string),
      defaultText: "runs/<date>-<method>; with --resume its folder",
      metavar: "DIR",
      help: "output folder",
      group: CLUSTER,
    },
    overwrite: {
      type: "boolean",
      help: "replace a non-empty --out (and --export-adapter's files)",
      group: CLUSTER,
    },
    "save-dtype": {
      type: "enum",
      choices: SAVE_DTYPES,
      default: null,
      defaultText: "the input model's dtype, tensor by tensor",
      help: "dtype of the written model (16-bit rounds to nearest even) and of " +
        "--export-adapter's adapter (default there: float32)",
      group: CLUSTER,
    },
    "max-shard-size": {
      type: "custom",
      parse: parseByteSize,
      schema: z.number().int().min(1),
      default: null,
      defaultText: "5GB if the input model is sharded, else one file",
      metavar: "SIZE",
      help: "shard the written model into files of at most SIZE (5GB, 500MB, 2GiB, bytes) with " +
        "model.safetensors.index.json",
      group: CLUSTER,
    },
    "export-adapter": {
      type: "string",
      nonEmpty: true,
      default: null,
      metavar: "DIR",
      help: "also write the result as a PEFT LoRA adapter of --model into DIR (with --compare, " +
        "DIR/<method>); rank: the method's bound (2Kr, 2r, r; full: --rank), capped by each matrix",
      group: CLUSTER,
    },
    "checkpoint-every": {
      type: "int",
      min: 0,
      default: 50,
      help: "steps between checkpoints (0 = only at the end)",
      group: CLUSTER,
    },
    "checksum-every": {
      type: "int",
      min: 1,
      default: 10,
      help: "steps between W checksum comparisons",
      group: CLUSTER,
    },
    device: {
      type: "enum",
      choices: ADAPTER_CHOICES,
      default: "auto",
      help: "gpu: only a GPU adapter, a CPU one is refused; cpu: the CPU adapter (lavapipe); " +
        "auto: a GPU when there is one, else the CPU adapter with a warning, recorded in " +
        "report.json",
      group: CLUSTER,
      toWorkers: true,
    },
    sync: {
      type: "enum",
      choices: ["auto", "exact", "tolerant"],
      default: "auto",
      help: "exact: W bit-identical on every worker, else stop; tolerant: within 1e-6 relative, " +
        "re-synchronised from worker 0 at each checksum (mixed devices); auto: tolerant when " +
        "the workers' devices differ",
      group: CLUSTER,
    },
    "load-via": {
      type: "enum",
      choices: ["auto", "store"],
      default: "auto",
      help: "how workers read the base weights: auto: workers on this host read the model " +
        "folder directly (each weight file's SHA-256 checked), others the object store; " +
        "store: every worker through the object store",
      group: CLUSTER,
    },
    resume: {
      type: "string",
      default: null,
      metavar: "DIR",
      help: "continue the run in DIR from its latest complete checkpoint",
      group: CLUSTER,
    },
    "eval-per-task": {
      type: "int",
      min: 1,
      default: 50,
      help: "examples per task evaluated",
      group: EVAL,
    },
    "eval-all": { type: "boolean", help: "evaluate every example", group: EVAL },
    "max-new-tokens": {
      type: "int",
      min: 1,
      default: null,
      defaultText: "longest reference response in tokens + 8",
      help: "",
      group: EVAL,
    },
    "on-nonfinite": {
      type: "enum",
      choices: ["skip", "stop"],
      default: "stop",
      help: "a NaN/Inf contribution skips the step or stops the run",
      group: CLUSTER,
    },
    dashboard: {
      type: "custom",
      parse: (raw: string, flag: string) => parseListen(raw, flag),
      schema: listenSchema,
      default: null,
      metavar: "[HOST:]PORT",
      help: "serve a live dashboard of the run (read-only) at http://HOST:PORT; HOST defaults to " +
        "127.0.0.1, any other needs a token",
      group: CLUSTER,
    },
    "dashboard-token": {
      type: "string",
      nonEmpty: true,
      default: null,
      metavar: "TOKEN",
      help: "the token the dashboard asks every request for (default $HD_DASHBOARD_TOKEN); " +
        "required when it is not bound to loopback",
      group: CLUSTER,
      secret: true,
    },
  },
  check(o) {
    if (o.batchSize % (o.workers * o.microBatch) !== 0) {
      throw new FlagError(
        `--batch-size ${o.batchSize} must be a multiple of --workers × --micro-batch ` +
          `(${o.workers} × ${o.microBatch} = ${o.workers * o.microBatch})`,
        "batch-size",
      );
    }
    // --out defaults to --resume's folder: a different --out is a second folder.
    if (o.resume !== null && o.out !== o.resume) {
      throw new FlagError("--resume continues the run in its own folder; drop --out", "resume");
    }
    if (o.exportAdapter !== null && resolve(o.exportAdapter) === resolve(o.out)) {
      throw new FlagError(
        "--export-adapter needs a folder of its own, not the run's --out",
        "export-adapter",
      );
    }
    if (o.muteRescale === "fixed" && o.mute === "exact") {
      throw new FlagError(
        "--mute-rescale fixed rescales a numeric mute; give --mute GAMMA (e.g. 1e-16)",
        "mute-rescale",
      );
    }
    if (o.sliceScale === "equal" && o.method !== "hd-pissa" && !o.compare) {
      throw new FlagError(
        `--slice-scale equal changes hd-pissa's slices; --method ${o.method} has none`,
        "slice-scale",
      );
    }
    // Full fine-tuning updates W itself every step with an f32 optimizer; a 16-bit W would
    // round every update away below its ulp (docs/architecture.md), so it is refused here,
    // before anything starts, rather than degraded silently.
    if (o.weightsDtype !== "f32" && (o.method === "full" || o.compare)) {
      throw new FlagError(
        `--weights-dtype ${o.weightsDtype} is not supported with ${
          o.compare ? "--compare (it runs full)" : "--method full"
        }: full fine-tuning updates W with an f32 optimizer; use --weights-dtype f32`,
        "weights-dtype",
      );
    }
    if (o.compare && o.resume !== null) {
      throw new FlagError(
        "--resume continues one run; it cannot be combined with --compare",
        "compare",
      );
    }
  },
});

/** Every setting of a fine-tuning run, resolved. */
export type FinetuneOptions = typeof FINETUNE_FLAGS.Options;

/** The settings a worker needs (the flags marked `toWorkers`). */
export const WorkerSettingsSchema = FINETUNE_FLAGS.markedSchema("toWorkers");
export type WorkerSettings = z.infer<typeof WorkerSettingsSchema>;

/** The settings a worker needs, picked from the run's options. */
export function workerSettings(o: FinetuneOptions): WorkerSettings {
  return FINETUNE_FLAGS.pick(o, "toWorkers");
}

/** Every flag at its default (`out` computed for `hd-pissa` now). */
export function defaultOptions(): FinetuneOptions {
  return FINETUNE_FLAGS.defaults();
}

export const USAGE: string = FINETUNE_FLAGS.usage;

/** Parses the fine-tuning flags. `{ help: true }` means print `USAGE` and stop. */
export function parseFinetuneArgs(
  args: string[],
): { help: boolean; options: FinetuneOptions; given: Set<string> } {
  const { help, options, given } = FINETUNE_FLAGS.parse(args);
  return { help, options, given };
}

/**
 * The resolved flags a resumed run must share with its checkpoint: everything that decides what
 * the run computes (output, evaluation and recovery settings may change).
 */
export const RESUME_KEYS: readonly string[] = FINETUNE_FLAGS.marked("definesRun")
  .map((n) => n.replace(/-/g, "_"));

/** The flags a report shows first, under their `config` names. */
export const SUMMARY_KEYS: readonly string[] = FINETUNE_FLAGS.marked("summary")
  .map((n) => n.replace(/-/g, "_"));

/** The options as `report.json`'s `config`: flag names with `-` → `_`, every value resolved. */
export function resolvedConfig(o: FinetuneOptions): Record<string, unknown> {
  return FINETUNE_FLAGS.config(o);
}

/** The resolved options as a zod schema, for messages that carry them (the Driver's input). */
export const FinetuneOptionsSchema: z.ZodType<FinetuneOptions> = FINETUNE_FLAGS.schema;

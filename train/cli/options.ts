/**
 * The fine-tuning job's flags: parsing, defaults, and every check that can be made before any
 * work starts (DESIGN §2, §4, §9). `report.json`'s `config` is `resolvedConfig(options)`: each
 * flag under its own name with `-` turned into `_`.
 * @module
 */
import { DomainError } from "../../core/errors.ts";
import { parseArgs } from "node:util";
import { z } from "zod";
import { LINEAR_KINDS, type LinearKind } from "../../model/config.ts";
import { type ScheduleName, SCHEDULES } from "../optim/schedule.ts";

import { type Method, METHODS } from "../methods/names.ts";
export { type Method, METHODS };

/** A flag that is unknown, malformed, or impossible together with the others or the model. */
export class FlagError extends DomainError {
  static override readonly code: string = "FLAG";
  static readonly fields = z.object({ flag: z.string().optional() });
  readonly flag?: string;
  constructor(message: string, flag?: string) {
    super(message);
    this.flag = flag;
  }
}

/** Every setting of a fine-tuning run, resolved. */
export interface FinetuneOptions {
  model: string;
  data: string;
  eval: string | null;
  promptField: string;
  responseField: string;
  taskField: string;
  skipMalformed: boolean;
  method: Method;
  compare: boolean;
  workers: number;
  rank: number;
  alpha: number;
  targets: LinearKind[];
  /** `"exact"` (the γ → 0 limit) or a numeric mute scalar γ in [1e-38, 1]. */
  mute: "exact" | number;
  aggregate: "mean" | "sum";
  optimizer: "adamw" | "sgd";
  lr: number;
  weightDecay: number;
  schedule: ScheduleName;
  warmupRatio: number;
  /** Clip by global norm; 0 turns clipping off. */
  clip: number;
  batchSize: number;
  microBatch: number;
  seqLen: number;
  epochs: number;
  maxSteps: number | null;
  seed: number;
  shuffle: boolean;
  svd: "auto" | "exact" | "randomized";
  svdNiter: number;
  nats: string | null;
  out: string;
  overwrite: boolean;
  checkpointEvery: number;
  checksumEvery: number;
  /**
   * How W is kept the same on every worker: `exact` (bit-identical, a mismatch stops the run),
   * `tolerant` (within 1e-6 relative, re-synchronised from worker 0 at every checksum), `auto`
   * (tolerant when the workers' devices differ).
   */
  sync: "auto" | "exact" | "tolerant";
  resume: string | null;
  evalPerTask: number;
  evalAll: boolean;
  maxNewTokens: number | null;
  onNonfinite: "skip" | "stop";
}

/** The shipped model and benchmark, relative to the project root. */
export const PROJECT_ROOT = new URL("../../", import.meta.url);
const fromRoot = (p: string) => decodeURIComponent(new URL(p, PROJECT_ROOT).pathname);

export function defaultOptions(): FinetuneOptions {
  return {
    model: fromRoot("models/base"),
    data: fromRoot("data/bench/train.jsonl"),
    eval: fromRoot("data/bench/test.jsonl"),
    promptField: "prompt",
    responseField: "response",
    taskField: "task",
    skipMalformed: false,
    method: "hd-pissa",
    compare: false,
    workers: 4,
    rank: 4,
    alpha: 4,
    targets: [...LINEAR_KINDS],
    mute: "exact",
    aggregate: "mean",
    optimizer: "adamw",
    lr: 5e-3,
    weightDecay: 0,
    schedule: "cosine",
    warmupRatio: 0.03,
    clip: 1,
    batchSize: 16,
    microBatch: 4,
    seqLen: 64,
    epochs: 3,
    maxSteps: null,
    seed: 42,
    shuffle: true,
    svd: "auto",
    svdNiter: 4,
    nats: null,
    out: "",
    overwrite: false,
    checkpointEvery: 50,
    checksumEvery: 10,
    sync: "auto",
    resume: null,
    evalPerTask: 50,
    evalAll: false,
    maxNewTokens: null,
    onNonfinite: "stop",
  };
}

export const USAGE = `Fine-tune a LLaMA-family model with HD-PiSSA (or a baseline) on K GPU actors.

usage: deno task finetune [flags]

data and model
  --model DIR            model folder: config.json, model.safetensors [, tokenizer.json]
                         (default: the shipped base model, models/base)
  --data FILE            training JSONL (default: the shipped benchmark, data/bench/train.jsonl)
  --eval FILE            test JSONL evaluated before and after (default data/bench/test.jsonl;
                         "none" skips evaluation)
  --prompt-field NAME    default prompt
  --response-field NAME  default response
  --task-field NAME      default task (absent field: task "all")
  --skip-malformed       skip malformed JSONL lines (counted) instead of stopping
method
  --method M             hd-pissa | pissa | lora | full (default hd-pissa)
  --compare              run all four methods on the same data; writes one folder per method
  --workers K            GPU worker actors (default 4)
  --rank R               adapter rank per worker (default 4)
  --alpha A              scaling s = alpha / rank (default: alpha = rank)
  --targets LIST         comma-separated: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
  --mute exact|GAMMA     exact (default) or a mute scalar in [1e-38, 1], e.g. 1e-16
  --aggregate mean|sum   combine the K updates with c = 1/K (default) or c = 1
  --svd auto|exact|randomized   adapter SVD (auto: exact up to 1024 on the short side)
  --svd-niter N          power iterations of the randomized SVD (default 4)
optimisation
  --optimizer adamw|sgd  (default adamw)
  --lr X                 peak learning rate (default 5e-3)
  --weight-decay X       decoupled weight decay (default 0)
  --schedule S           cosine | linear | constant (default cosine)
  --warmup-ratio X       warmup steps = ceil(X * T) (default 0.03)
  --clip X               clip by global norm (default 1; 0 = off)
  --batch-size N         global batch per step (default 16)
  --micro-batch M        examples per micro-batch on one worker (default 4)
  --seq-len N            tokens per example (default 64)
  --epochs N             passes over the data (default 3)
  --max-steps N          T; overrides --epochs
  --seed N               (default 42)
  --shuffle true|false   seeded shuffle per epoch (default true)
evaluation
  --eval-per-task N      examples per task evaluated (default 50)
  --eval-all             evaluate every example
  --max-new-tokens N     default: longest reference response in tokens + 8
cluster, output and recovery
  --nats URL             join an existing cluster (nats:// or ws://) instead of a private one
  --out DIR              output folder (default runs/<date>-<method>)
  --overwrite            replace a non-empty --out
  --checkpoint-every N   steps between checkpoints (default 50; 0 = only at the end)
  --checksum-every N     steps between W checksum comparisons (default 10)
  --sync auto|exact|tolerant   exact: W bit-identical on every worker, else stop; tolerant: within
                         1e-6 relative, re-synchronised from worker 0 at each checksum (mixed
                         devices); auto (default): tolerant when the workers' devices differ
  --resume DIR           continue the run in DIR from its latest complete checkpoint
  --on-nonfinite skip|stop   a NaN/Inf contribution skips the step or stops the run (default stop)
  --help                 this text
`;

const STRING_FLAGS = [
  "model",
  "data",
  "eval",
  "prompt-field",
  "response-field",
  "task-field",
  "method",
  "workers",
  "rank",
  "alpha",
  "targets",
  "mute",
  "aggregate",
  "optimizer",
  "lr",
  "weight-decay",
  "schedule",
  "warmup-ratio",
  "clip",
  "batch-size",
  "micro-batch",
  "seq-len",
  "epochs",
  "max-steps",
  "seed",
  "shuffle",
  "svd",
  "svd-niter",
  "nats",
  "out",
  "checkpoint-every",
  "checksum-every",
  "sync",
  "resume",
  "eval-per-task",
  "max-new-tokens",
  "on-nonfinite",
] as const;
const BOOLEAN_FLAGS = ["compare", "overwrite", "skip-malformed", "eval-all", "help"] as const;

function num(flag: string, v: string): number {
  const x = Number(v);
  if (v.trim() === "" || !Number.isFinite(x)) {
    throw new FlagError(`--${flag} must be a number, got ${JSON.stringify(v)}`, flag);
  }
  return x;
}

function int(flag: string, v: string, min: number): number {
  const x = num(flag, v);
  if (!Number.isInteger(x) || x < min) {
    throw new FlagError(`--${flag} must be an integer >= ${min}, got ${v}`, flag);
  }
  return x;
}

function oneOf<T extends string>(flag: string, v: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(v)) {
    throw new FlagError(
      `--${flag} must be one of ${allowed.join(", ")}, got ${JSON.stringify(v)}`,
      flag,
    );
  }
  return v as T;
}

function range(flag: string, x: number, lo: number, hi: number): number {
  if (!(x >= lo && x <= hi)) {
    throw new FlagError(`--${flag} must be in [${lo}, ${hi}], got ${x}`, flag);
  }
  return x;
}

/** Parses the fine-tuning flags. `{ help: true }` means print `USAGE` and stop. */
export function parseFinetuneArgs(args: string[]): { help: boolean; options: FinetuneOptions } {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: Object.fromEntries([
        ...STRING_FLAGS.map((f) => [f, { type: "string" as const }]),
        ...BOOLEAN_FLAGS.map((f) => [f, { type: "boolean" as const }]),
      ]),
      allowPositionals: false,
      strict: true,
    });
  } catch (e) {
    throw new FlagError(`${(e as Error).message} (see --help)`);
  }
  const v = parsed.values as Record<string, string | boolean | undefined>;
  const o = defaultOptions();
  if (v.help) return { help: true, options: o };
  const s = (k: string) => v[k] as string | undefined;

  if (s("model") !== undefined) o.model = s("model")!;
  if (s("data") !== undefined) o.data = s("data")!;
  if (s("eval") !== undefined) o.eval = s("eval") === "none" ? null : s("eval")!;
  if (s("prompt-field") !== undefined) o.promptField = s("prompt-field")!;
  if (s("response-field") !== undefined) o.responseField = s("response-field")!;
  if (s("task-field") !== undefined) o.taskField = s("task-field")!;
  o.skipMalformed = v["skip-malformed"] === true;
  if (s("method") !== undefined) o.method = oneOf("method", s("method")!, METHODS);
  o.compare = v.compare === true;
  if (s("workers") !== undefined) o.workers = int("workers", s("workers")!, 1);
  if (s("rank") !== undefined) o.rank = int("rank", s("rank")!, 1);
  o.alpha = s("alpha") !== undefined ? num("alpha", s("alpha")!) : o.rank;
  if (!(o.alpha > 0)) throw new FlagError(`--alpha must be positive, got ${o.alpha}`, "alpha");
  if (s("targets") !== undefined) {
    const list = s("targets")!.split(",").map((t) => t.trim()).filter((t) => t !== "");
    if (list.length === 0) throw new FlagError("--targets is empty", "targets");
    for (const t of list) {
      if (!(LINEAR_KINDS as readonly string[]).includes(t)) {
        throw new FlagError(
          `--targets: unknown layer "${t}" (known: ${LINEAR_KINDS.join(", ")})`,
          "targets",
        );
      }
    }
    o.targets = LINEAR_KINDS.filter((k) => list.includes(k));
  }
  if (s("mute") !== undefined) {
    o.mute = s("mute") === "exact" ? "exact" : range("mute", num("mute", s("mute")!), 1e-38, 1);
  }
  if (s("aggregate") !== undefined) {
    o.aggregate = oneOf("aggregate", s("aggregate")!, ["mean", "sum"]);
  }
  if (s("optimizer") !== undefined) {
    o.optimizer = oneOf("optimizer", s("optimizer")!, ["adamw", "sgd"]);
  }
  if (s("lr") !== undefined) o.lr = range("lr", num("lr", s("lr")!), 0, 10);
  if (s("weight-decay") !== undefined) {
    o.weightDecay = range("weight-decay", num("weight-decay", s("weight-decay")!), 0, 10);
  }
  if (s("schedule") !== undefined) o.schedule = oneOf("schedule", s("schedule")!, SCHEDULES);
  if (s("warmup-ratio") !== undefined) {
    o.warmupRatio = range("warmup-ratio", num("warmup-ratio", s("warmup-ratio")!), 0, 1);
  }
  if (s("clip") !== undefined) o.clip = range("clip", num("clip", s("clip")!), 0, Infinity);
  if (s("batch-size") !== undefined) o.batchSize = int("batch-size", s("batch-size")!, 1);
  if (s("micro-batch") !== undefined) o.microBatch = int("micro-batch", s("micro-batch")!, 1);
  if (s("seq-len") !== undefined) o.seqLen = int("seq-len", s("seq-len")!, 2);
  if (s("epochs") !== undefined) o.epochs = int("epochs", s("epochs")!, 1);
  if (s("max-steps") !== undefined) o.maxSteps = int("max-steps", s("max-steps")!, 1);
  if (s("seed") !== undefined) o.seed = int("seed", s("seed")!, 0);
  if (s("shuffle") !== undefined) {
    o.shuffle = oneOf("shuffle", s("shuffle")!, ["true", "false"]) === "true";
  }
  if (s("svd") !== undefined) o.svd = oneOf("svd", s("svd")!, ["auto", "exact", "randomized"]);
  if (s("svd-niter") !== undefined) o.svdNiter = int("svd-niter", s("svd-niter")!, 0);
  if (s("nats") !== undefined) {
    const url = s("nats")!;
    if (!/^(nats|tls|ws|wss):\/\/./.test(url)) {
      throw new FlagError(
        `--nats must be a nats://, tls://, ws:// or wss:// URL, got ${url}`,
        "nats",
      );
    }
    o.nats = url;
  }
  if (s("out") !== undefined) o.out = s("out")!;
  o.overwrite = v.overwrite === true;
  if (s("checkpoint-every") !== undefined) {
    o.checkpointEvery = int("checkpoint-every", s("checkpoint-every")!, 0);
  }
  if (s("sync") !== undefined) o.sync = oneOf("sync", s("sync")!, ["auto", "exact", "tolerant"]);
  if (s("checksum-every") !== undefined) {
    o.checksumEvery = int("checksum-every", s("checksum-every")!, 1);
  }
  if (s("resume") !== undefined) o.resume = s("resume")!;
  if (s("eval-per-task") !== undefined) {
    o.evalPerTask = int("eval-per-task", s("eval-per-task")!, 1);
  }
  o.evalAll = v["eval-all"] === true;
  if (s("max-new-tokens") !== undefined) {
    o.maxNewTokens = int("max-new-tokens", s("max-new-tokens")!, 1);
  }
  if (s("on-nonfinite") !== undefined) {
    o.onNonfinite = oneOf("on-nonfinite", s("on-nonfinite")!, ["skip", "stop"]);
  }

  if (o.batchSize % (o.workers * o.microBatch) !== 0) {
    throw new FlagError(
      `--batch-size ${o.batchSize} must be a multiple of --workers × --micro-batch ` +
        `(${o.workers} × ${o.microBatch} = ${o.workers * o.microBatch})`,
      "batch-size",
    );
  }
  if (o.resume !== null && o.out !== "" && o.out !== o.resume) {
    throw new FlagError("--resume continues the run in its own folder; drop --out", "resume");
  }
  if (o.compare && o.resume !== null) {
    throw new FlagError(
      "--resume continues one run; it cannot be combined with --compare",
      "compare",
    );
  }
  if (o.out === "") o.out = o.resume ?? defaultOutDir(o.compare ? "compare" : o.method);
  return { help: false, options: o };
}

/** `runs/<date>-<method>` under the current folder, the date as YYYYMMDD-HHMMSS (local time). */
export function defaultOutDir(method: string, now = new Date()): string {
  const p = (n: number) => String(n).padStart(2, "0");
  const stamp = `${now.getFullYear()}${p(now.getMonth() + 1)}${p(now.getDate())}-` +
    `${p(now.getHours())}${p(now.getMinutes())}${p(now.getSeconds())}`;
  return `runs/${stamp}-${method}`;
}

/**
 * The resolved flags a resumed run must share with its checkpoint: everything that decides what
 * the run computes (output, evaluation and recovery settings may change).
 */
export const RESUME_KEYS: readonly string[] = [
  "method",
  "workers",
  "rank",
  "alpha",
  "targets",
  "mute",
  "aggregate",
  "optimizer",
  "lr",
  "weight_decay",
  "schedule",
  "warmup_ratio",
  "clip",
  "batch_size",
  "micro_batch",
  "seq_len",
  "epochs",
  "max_steps",
  "seed",
  "shuffle",
  "data",
  "model",
];

/** The options as `report.json`'s `config`: flag names with `-` → `_`, every value resolved. */
export function resolvedConfig(o: FinetuneOptions): Record<string, unknown> {
  return {
    model: o.model,
    data: o.data,
    eval: o.eval,
    prompt_field: o.promptField,
    response_field: o.responseField,
    task_field: o.taskField,
    skip_malformed: o.skipMalformed,
    method: o.method,
    compare: o.compare,
    workers: o.workers,
    rank: o.rank,
    alpha: o.alpha,
    targets: o.targets,
    mute: o.mute,
    aggregate: o.aggregate,
    optimizer: o.optimizer,
    lr: o.lr,
    weight_decay: o.weightDecay,
    schedule: o.schedule,
    warmup_ratio: o.warmupRatio,
    clip: o.clip,
    batch_size: o.batchSize,
    micro_batch: o.microBatch,
    seq_len: o.seqLen,
    epochs: o.epochs,
    max_steps: o.maxSteps,
    seed: o.seed,
    shuffle: o.shuffle,
    svd: o.svd,
    svd_niter: o.svdNiter,
    nats: o.nats,
    out: o.out,
    overwrite: o.overwrite,
    checkpoint_every: o.checkpointEvery,
    checksum_every: o.checksumEvery,
    sync: o.sync,
    resume: o.resume,
    eval_per_task: o.evalPerTask,
    eval_all: o.evalAll,
    max_new_tokens: o.maxNewTokens,
    on_nonfinite: o.onNonfinite,
  };
}

/** The resolved options as a zod schema, for messages that carry them (the Driver's input). */
export const FinetuneOptionsSchema = z.object({
  model: z.string(),
  data: z.string(),
  eval: z.string().nullable(),
  promptField: z.string(),
  responseField: z.string(),
  taskField: z.string(),
  skipMalformed: z.boolean(),
  method: z.enum(METHODS),
  compare: z.boolean(),
  workers: z.number().int().min(1),
  rank: z.number().int().min(1),
  alpha: z.number().positive(),
  targets: z.array(z.enum(LINEAR_KINDS)).min(1),
  mute: z.union([z.literal("exact"), z.number().min(1e-38).max(1)]),
  aggregate: z.enum(["mean", "sum"]),
  optimizer: z.enum(["adamw", "sgd"]),
  lr: z.number().min(0),
  weightDecay: z.number().min(0),
  schedule: z.enum(SCHEDULES),
  warmupRatio: z.number().min(0).max(1),
  clip: z.number().min(0),
  batchSize: z.number().int().min(1),
  microBatch: z.number().int().min(1),
  seqLen: z.number().int().min(2),
  epochs: z.number().int().min(1),
  maxSteps: z.number().int().min(1).nullable(),
  seed: z.number().int().min(0),
  shuffle: z.boolean(),
  svd: z.enum(["auto", "exact", "randomized"]),
  svdNiter: z.number().int().min(0),
  nats: z.string().nullable(),
  out: z.string().min(1),
  overwrite: z.boolean(),
  checkpointEvery: z.number().int().min(0),
  checksumEvery: z.number().int().min(1),
  sync: z.enum(["auto", "exact", "tolerant"]),
  resume: z.string().nullable(),
  evalPerTask: z.number().int().min(1),
  evalAll: z.boolean(),
  maxNewTokens: z.number().int().min(1).nullable(),
  onNonfinite: z.enum(["skip", "stop"]),
}) satisfies z.ZodType<FinetuneOptions>;

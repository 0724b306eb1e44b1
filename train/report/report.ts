/**
 * `report.json` of a fine-tuning run (docs/architecture.md §9): its types, its zod schema, validation with an
 * error that names the offending key, and an atomic writer.
 *
 * Unknown keys are kept everywhere (the contract says "at least these keys"), so a newer report
 * still validates and round-trips through an older reader.
 * @module
 */
import type { MemoryPlan } from "../plan/memory.ts";
import { DomainError } from "../../core/errors.ts";
import { z } from "zod";

/** A value that survives `JSON.stringify` / `JSON.parse` unchanged. */
export type JsonValue =
  | string
  | number
  | boolean
  | null
  | JsonValue[]
  | { [key: string]: JsonValue };

/** One optimizer step as the driver saw it. */
export interface StepRecord {
  /** 0-based step index; strictly increasing through `steps`. */
  step: number;
  /**
   * Mean training loss over workers. Not finite (a diverged run) is kept as NaN/Infinity in
   * memory and becomes `null` in JSON.
   */
  loss: number | null;
  lr: number;
  /** Wall time of the step in milliseconds. */
  ms: number;
  /** Payload bytes a worker sent during the step (mean over workers, no NATS overhead). */
  bytes_sent: number;
  /** Payload bytes a worker received during the step (mean over workers). */
  bytes_received: number;
  /** Target tokens trained on in this step (optional). */
  tokens?: number;
}

import type { TaskCount } from "../eval/score.ts";
export type { TaskCount };

/** Accuracy of one evaluation pass (before or after fine-tuning). */
export interface EvalSplit {
  /** Mean over all examples, in [0, 1]. */
  overall: number;
  /** Accuracy per task label, in [0, 1]. */
  tasks: Record<string, number>;
  n?: number;
  correct?: number;
  counts?: Record<string, TaskCount>;
}

/** `eval` of report.json; `null` means that pass was not run. */
export interface EvalRecord {
  before: EvalSplit | null;
  after: EvalSplit | null;
}

/** Effective rank of ΔW = W_final − W_initial for one matrix (docs/architecture.md §2). */
export interface MatrixRank {
  /** Count of σ_i > 10⁻²·σ_1. */
  "rank_1e-2": number;
  /** Fewest leading components holding 90% of Σσ². */
  energy90: number;
}

/** Totals over the run, in milliseconds (docs/architecture.md §9). */
export interface Timing {
  total_ms: number;
  /** Forward, backward and optimizer (max over workers). */
  compute_ms: number;
  /** The driver's gather + broadcast wall time. */
  comm_ms: number;
  /** Applying the update (max over workers). */
  update_ms: number;
  /** The adapter init in the driver (the SVDs of every adapted matrix); absent on a resume. */
  init_ms?: number;
}

/** Memory a method needs per worker beyond the model weights. */
export interface MemoryRecord {
  /** Floats of optimizer state (e.g. AdamW moments) one worker holds. */
  optimizer_floats_per_worker?: number;
  /** Bytes of that state; if absent, readers assume 4 bytes per float. */
  optimizer_bytes_per_worker?: number;
  /** Floats of trainable adapter (or weight) parameters one worker owns. */
  trainable_floats_per_worker?: number;
}

/** The expected bytes per step per worker from the formula of docs/architecture.md §2. */
export interface BytesFormula {
  sent: number;
  received: number;
  /** The formula in words, e.g. "4·Σ(in+out)·r sent, K times that received". */
  expression?: string;
}

/** How one matrix's adapter reproduces its ΔW (`adapter_export.matrices`). */
export interface AdapterMatrixRecord {
  rank: number;
  /** `[out, in]`. */
  shape: number[];
  /** `exact` or `randomized`. */
  svd?: string;
  /** Σσ² kept / ‖ΔW‖². */
  energy_kept: number;
  /** ‖W_base + B·A − W_final‖ / ‖W_final − W_base‖. */
  rel_error: number;
  /** ‖W_base + B·A − W_final‖ / ‖W_final‖. */
  rel_error_weight: number;
  delta_norm?: number;
}

/** The run's model as a PEFT LoRA adapter (`--export-adapter`, docs/architecture.md §9). */
export interface AdapterExportRecord {
  /** The adapter folder. */
  folder: string;
  /** `r` of adapter_config.json (the largest rank; smaller ones are in `rank_pattern`). */
  rank: number;
  /** Where the rank came from, e.g. `2Kr = 32` or `--rank`. */
  rank_source?: string;
  /** Over all adapted matrices. */
  energy_kept: number;
  rel_error: number;
  rel_error_weight?: number;
  min_energy_kept?: number;
  max_rel_error?: number;
  /** Per adapted matrix. */
  matrices: Record<string, AdapterMatrixRecord>;
  /** Changed tensors the adapter does not carry (e.g. norms under full fine-tuning). */
  not_in_adapter?: { tensor: string; rel_change: number }[];
  adapter_bytes?: number;
}

/** A model or data set: a path or name, or an object describing it. */
export type Described = string | {
  name?: string;
  path?: string;
  [key: string]: JsonValue | undefined;
};

/** The whole `report.json`. */
export interface RunReport {
  method: string;
  /** Every resolved flag, keys snake_case (flag names with `-` → `_`), including `seed`. */
  config: Record<string, JsonValue>;
  /**
   * The defaults that depend on the model (train/cli/recipe.ts): each value, as in `config`, and
   * where it came from ("flag", the shipped model's tuned default, a paper's recipe).
   */
  recipe?: Record<string, { value: JsonValue; source: string }>;
  steps: StepRecord[];
  eval: EvalRecord;
  effective_rank: Record<string, MatrixRank>;
  timing: Timing;
  /** Singular values of ΔW per matrix, descending. */
  spectra?: Record<string, number[]>;
  memory?: MemoryRecord;
  /** The memory plan checked before the run (train/plan/memory.ts), bytes. */
  memory_plan?: MemoryPlan;
  bytes_per_step_formula?: BytesFormula;
  /** ISO 8601 date-times. */
  started_at?: string;
  finished_at?: string;
  model?: Described;
  data?: Described;
  /** Each worker's adapter, in worker order. */
  devices?: string[];
  /** Workers that `--device auto` ran on a CPU adapter, and why (empty: none). */
  device_fallback?: { worker: number; device: string; reason: string }[];
  /** Where the init's randomized SVDs ran (`--svd-device`), and why; absent when none ran. */
  svd_device?: { asked: string; used: "cpu" | "gpu"; reason: string };
  /** How each worker read the base weights: the model folder itself or the object store. */
  weights_loaded_via?: ("folder" | "store")[];
  /**
   * W through the object store, as the driver counted it over all loads (base, restores): the
   * chunks it put and the most bytes of them it held at once (at most one chunk; absent when no
   * worker loaded through the store).
   */
  weights_store?: { chunks: number; peak_bytes: number };
  /** Each worker whose loss was not finite, with the step (once per step and worker). */
  nonfinite_losses?: { step: number; worker: number }[];
  /** How many entries `nonfinite_losses` has. */
  nonfinite_loss_count?: number;
  /**
   * Workers that a tolerant checksum found off worker 0 and re-synchronised: the step after
   * which, and the tensor off the most with its relative difference.
   */
  sync_drift?: { step: number; worker: number; tensor: string; relative: number }[];
  /** The adapter written by `--export-adapter`, and how close it comes to the model. */
  adapter_export?: AdapterExportRecord;
}

/** A report that does not meet the contract; `key` is the path of the first bad value. */
export class ReportError extends DomainError {
  static override readonly code: string = "REPORT";
  static readonly fields = z.object({ key: z.string() });
  constructor(message: string, readonly key: string) {
    super(message);
  }
}

const nonNeg = z.number().nonnegative();
const count = z.int().nonnegative();
const fraction = z.number().min(0).max(1);
const jsonValue: z.ZodType<JsonValue> = z.json();
const snakeKey = z.string().regex(/^[a-z][a-z0-9_]*$/, "config keys must be snake_case");

// A diverged run is still worth a report, so any number (NaN included) or null is a loss.
const loss = z.union([
  z.custom<number>((v) => typeof v === "number", "expected a number or null"),
  z.null(),
]);

const stepSchema = z.looseObject({
  step: count,
  loss,
  lr: nonNeg,
  ms: nonNeg,
  bytes_sent: nonNeg,
  bytes_received: nonNeg,
  tokens: nonNeg.optional(),
});

/** One evaluation (`eval.before` or `eval.after`). */
export const evalSplitSchema = z.looseObject({
  overall: fraction,
  tasks: z.record(z.string(), fraction),
  n: count.optional(),
  correct: count.optional(),
  counts: z.record(z.string(), z.looseObject({ n: count, correct: count })).optional(),
});

const describedSchema = z.union([
  z.string(),
  z.object({ name: z.string().optional(), path: z.string().optional() }).catchall(jsonValue),
]);

const spectrumSchema = z.array(nonNeg).superRefine((s, ctx) => {
  for (let i = 1; i < s.length; i++) {
    if (s[i] > s[i - 1]) {
      ctx.addIssue({
        code: "custom",
        path: [i],
        message: `singular values must be descending: ${s[i]} after ${s[i - 1]}`,
      });
      return;
    }
  }
});

/** The zod schema of `report.json`. */
export const reportSchema = z.looseObject({
  method: z.string().min(1),
  config: z.record(snakeKey, jsonValue).superRefine((c, ctx) => {
    if (!("seed" in c)) {
      ctx.addIssue({ code: "custom", path: ["seed"], message: "the seed must be recorded" });
    }
  }),
  recipe: z.record(snakeKey, z.looseObject({ value: jsonValue, source: z.string().min(1) }))
    .optional(),
  steps: z.array(stepSchema).superRefine((steps, ctx) => {
    for (let i = 1; i < steps.length; i++) {
      if (!(steps[i].step > steps[i - 1].step)) {
        ctx.addIssue({
          code: "custom",
          path: [i, "step"],
          message: `steps must be strictly increasing: ${steps[i].step} after ${steps[i - 1].step}`,
        });
        return;
      }
    }
  }),
  eval: z.looseObject({ before: evalSplitSchema.nullable(), after: evalSplitSchema.nullable() }),
  effective_rank: z.record(
    z.string().min(1),
    z.looseObject({ "rank_1e-2": count, energy90: count }),
  ),
  timing: z.looseObject({
    total_ms: nonNeg,
    compute_ms: nonNeg,
    comm_ms: nonNeg,
    update_ms: nonNeg,
    init_ms: nonNeg.optional(),
  }),
  spectra: z.record(z.string().min(1), spectrumSchema).optional(),
  memory: z.looseObject({
    optimizer_floats_per_worker: count.optional(),
    optimizer_bytes_per_worker: nonNeg.optional(),
    trainable_floats_per_worker: count.optional(),
  }).optional(),
  memory_plan: z.looseObject({
    workers: count,
    method: z.enum(["hd-pissa", "pissa", "lora", "full"]).optional(),
    weights_dtype: z.enum(["f32", "bf16", "f16"]).optional(),
    micro_batch: count,
    seq_len: count,
    head_chunk: count,
    worker: z.looseObject({
      weights: nonNeg,
      adapters: nonNeg,
      optimizer: nonNeg,
      gradients: nonNeg,
      activations: nonNeg,
      workspace: nonNeg,
      total: nonNeg,
      largest: z.looseObject({ label: z.string(), bytes: nonNeg }),
    }),
    host: z.looseObject({ weights: nonNeg, serialized: nonNeg, svd: nonNeg, total: nonNeg }),
  }).optional(),
  bytes_per_step_formula: z.looseObject({
    sent: nonNeg,
    received: nonNeg,
    expression: z.string().optional(),
  }).optional(),
  started_at: z.iso.datetime({ offset: true }).optional(),
  finished_at: z.iso.datetime({ offset: true }).optional(),
  model: describedSchema.optional(),
  data: describedSchema.optional(),
  devices: z.array(z.string()).optional(),
  device_fallback: z.array(z.object({ worker: count, device: z.string(), reason: z.string() }))
    .optional(),
  svd_device: z.object({ asked: z.string(), used: z.enum(["cpu", "gpu"]), reason: z.string() })
    .optional(),
  weights_loaded_via: z.array(z.enum(["folder", "store"])).optional(),
  weights_store: z.looseObject({ chunks: count, peak_bytes: count }).optional(),
  nonfinite_losses: z.array(z.looseObject({ step: count, worker: count })).optional(),
  nonfinite_loss_count: count.optional(),
  sync_drift: z.array(
    z.looseObject({ step: count, worker: count, tensor: z.string(), relative: nonNeg }),
  ).optional(),
  adapter_export: z.looseObject({
    folder: z.string().min(1),
    rank: count,
    rank_source: z.string().optional(),
    energy_kept: fraction,
    rel_error: nonNeg,
    rel_error_weight: nonNeg.optional(),
    min_energy_kept: fraction.optional(),
    max_rel_error: nonNeg.optional(),
    matrices: z.record(
      z.string().min(1),
      z.looseObject({
        rank: count,
        shape: z.array(count),
        svd: z.string().optional(),
        energy_kept: fraction,
        rel_error: nonNeg,
        rel_error_weight: nonNeg,
        delta_norm: nonNeg.optional(),
      }),
    ),
    not_in_adapter: z.array(z.looseObject({ tensor: z.string(), rel_change: nonNeg })).optional(),
    adapter_bytes: count.optional(),
  }).optional(),
});

// Compile-time guard: what the schema accepts is a RunReport.
const _schemaMatchesType = (r: z.output<typeof reportSchema>): RunReport => r;

/** `steps[3].loss`, `effective_rank["model.layers.0.q_proj.weight"]["rank_1e-2"]`. */
export function formatKeyPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else if (typeof p === "string" && /^[A-Za-z_][A-Za-z0-9_]*$/.test(p)) {
      out += out === "" ? p : `.${p}`;
    } else out += `[${JSON.stringify(String(p))}]`;
  }
  return out === "" ? "(root)" : out;
}

/**
 * Checks `json` against the contract and returns it typed. Unknown keys are kept.
 * @throws {ReportError} naming the first bad key, e.g. `steps[2].lr`.
 */
export function validateReport(json: unknown): RunReport {
  const r = reportSchema.safeParse(json);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  // A bad record key is reported at the key itself, which is the useful place to point at.
  const key = formatKeyPath(issue.path);
  const more = r.error.issues.length > 1 ? ` (and ${r.error.issues.length - 1} more)` : "";
  throw new ReportError(`report.json: ${key}: ${issue.message}${more}`, key);
}

/** Reads and validates a `report.json`. */
export async function readReportJson(path: string): Promise<RunReport> {
  const text = await Deno.readTextFile(path);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ReportError(`${path}: not JSON: ${(e as Error).message}`, "(root)");
  }
  return validateReport(json);
}

/**
 * Validates `report` and writes it as pretty JSON, atomically: a temporary file in the same
 * folder, flushed to disk, then renamed over `path`, so a reader never sees half a report.
 * Non-finite losses become `null`.
 * @throws {ReportError} if the report breaks the contract; nothing is written then.
 */
export async function writeReportJson(path: string, report: RunReport): Promise<void> {
  validateReport(report);
  await writeJsonAtomic(path, report);
}

/**
 * Writes `value` as pretty JSON through a temporary file in the same folder, flushed to disk and
 * then renamed over `path`: a reader sees the old file or the new one, never half of one.
 */
export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const text = JSON.stringify(value, null, 2) + "\n";
  const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  try {
    const file = await Deno.open(tmp, { write: true, createNew: true });
    try {
      const bytes = new TextEncoder().encode(text);
      let off = 0;
      while (off < bytes.length) off += await file.write(bytes.subarray(off));
      await file.syncData();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/**
 * Splits per-matrix effective-rank results (each with its spectrum) into the report's
 * `effective_rank` and `spectra` fields. Non-finite or negative singular values are refused.
 * @throws {ReportError} naming the matrix.
 */
export function effectiveRankFields(
  results: Record<string, MatrixRank & { spectrum?: ArrayLike<number> }>,
): { effective_rank: Record<string, MatrixRank>; spectra: Record<string, number[]> } {
  const effective_rank: Record<string, MatrixRank> = {};
  const spectra: Record<string, number[]> = {};
  for (const [name, r] of Object.entries(results)) {
    effective_rank[name] = { "rank_1e-2": r["rank_1e-2"], energy90: r.energy90 };
    if (r.spectrum === undefined) continue;
    const s = Array.from(r.spectrum);
    const bad = s.findIndex((v) => !(Number.isFinite(v) && v >= 0));
    if (bad >= 0) {
      const key = formatKeyPath(["spectra", name, bad]);
      throw new ReportError(`${key}: singular value ${s[bad]} is not a finite number >= 0`, key);
    }
    spectra[name] = s;
  }
  return { effective_rank, spectra };
}

/**
 * Turns parsed flags into the `config` of a report: keys to snake_case (`batch-size` and
 * `batchSize` both become `batch_size`), `undefined` dropped, non-finite numbers refused.
 * @throws {ReportError} for a value JSON cannot hold.
 */
export function configFromFlags(flags: object): Record<string, JsonValue> {
  const out: Record<string, JsonValue> = {};
  for (const [k, v] of Object.entries(flags)) {
    if (v === undefined) continue;
    const key = k.replace(/-/g, "_").replace(/([a-z0-9])([A-Z])/g, "$1_$2").toLowerCase();
    out[key] = toJson(v, `config.${key}`);
  }
  return out;
}

function toJson(v: unknown, key: string): JsonValue {
  if (v === null || typeof v === "string" || typeof v === "boolean") return v;
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new ReportError(`${key}: ${v} is not a finite number`, key);
    return v;
  }
  if (Array.isArray(v)) return v.map((x, i) => toJson(x, `${key}[${i}]`));
  if (typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
    const o: Record<string, JsonValue> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) o[k] = toJson(x, `${key}.${k}`);
    return o;
  }
  throw new ReportError(`${key}: a ${typeof v} cannot be written to JSON`, key);
}

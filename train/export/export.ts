/**
 * Exporting a fine-tuned model folder as a PEFT LoRA adapter of its base (docs/architecture.md
 * §9): both folders read and checked against each other, the adapter's rank per matrix chosen
 * (the method's rank bound, capped by the matrix, or `--rank`), every adapted matrix factored
 * (`peft.ts`), and the adapter folder written with its `export_report.json`.
 * @module
 */
import {
  adaptableLinears,
  expectedTensors,
  LINEAR_KINDS,
  type LinearKind,
  type LinearSpec,
  type LlamaConfig,
} from "../../model/config.ts";
import {
  type HostTensor,
  loadModelFolder,
  MissingTensorError,
  type ModelFolder,
  serializeSafetensors,
} from "../../model/safetensors.ts";
import type { FloatDtype } from "../../model/half_float.ts";
import type { TopSvdOptions } from "../linalg/svd.ts";
import { EXACT_SVD_MAX } from "../methods/init.ts";
import { findMethod } from "../methods/registry.ts";
import { readReportJson, type RunReport, writeJsonAtomic } from "../report/report.ts";
import {
  AdapterMissingTensorError,
  AdapterModelMismatchError,
  AdapterOutputError,
  AdapterRankError,
} from "./errors.ts";
import {
  ADAPTER_CONFIG_FILE,
  ADAPTER_WEIGHTS_FILE,
  EXPORT_REPORT_FILE,
  factorDelta,
  type MatrixExport,
  peftLoraConfig,
  peftTensorName,
} from "./peft.ts";

/** The files an export writes; `overwrite` removes only these from the output folder. */
export const ADAPTER_FILES: readonly string[] = [
  ADAPTER_CONFIG_FILE,
  ADAPTER_WEIGHTS_FILE,
  EXPORT_REPORT_FILE,
];

/** What the export writes into `export_report.json` (and a run's report.json `adapter_export`). */
export interface AdapterExport {
  /** The adapter folder. */
  folder: string;
  base: string;
  tuned: string;
  /** The run's method, when known (from its report.json or the job). */
  method: string | null;
  /** `r` of adapter_config.json: the largest rank of any matrix. */
  rank: number;
  /** Where the rank came from: the method's bound ("2Kr = 32") or "--rank". */
  rank_source: string;
  lora_alpha: number;
  target_modules: string[];
  /** Matrices whose rank is below `rank` (capped by min(out, in)), by PEFT pattern key. */
  rank_pattern: Record<string, number>;
  /** Over all matrices: Σ kept σ² / Σ ‖ΔW‖². */
  energy_kept: number;
  /** Over all matrices: √(Σ ‖error‖²) / √(Σ ‖ΔW‖²). */
  rel_error: number;
  /** Over all matrices: √(Σ ‖error‖²) / √(Σ ‖W_final‖²). */
  rel_error_weight: number;
  min_energy_kept: number;
  max_rel_error: number;
  /** Per adapted matrix (Hugging Face name). */
  matrices: Record<string, MatrixExport>;
  /**
   * Tensors that differ between base and tuned but are not in the adapter (e.g. the norms that
   * full fine-tuning trains), with ‖Δ‖/‖base‖: the adapter does not carry these changes.
   */
  not_in_adapter: { tensor: string; rel_change: number }[];
  /** Size of adapter_model.safetensors. */
  adapter_bytes: number;
  ms: number;
}

export interface ExportAdapterOptions {
  /** The base model folder. */
  base: string;
  /** The fine-tuned model folder (a run's folder, with its report.json, or any model folder). */
  tuned: string;
  /** The adapter folder to write. */
  out: string;
  /** Every matrix gets exactly this rank (an error where a matrix is smaller). */
  rank?: number | null;
  /** The rank of a method without a rank bound (full) when `rank` is not given; capped. */
  fallbackRank?: number | null;
  /** The run's method; default: from the tuned folder's report.json. */
  method?: string | null;
  /** The run's `rank` and `workers`, for the method's bound; default: from its report.json. */
  settings?: { rank: number; workers: number } | null;
  /** The adapted layers; default (null or empty): the report's `targets`, else every kind. */
  targets?: readonly LinearKind[] | null;
  /** `base_model_name_or_path`; default: `base` as given. */
  baseName?: string;
  svd?: "auto" | "exact" | "randomized";
  svdNiter?: number;
  seed?: number;
  /** Replace the adapter files of a non-empty `out`. */
  overwrite?: boolean;
  /**
   * The dtype of adapter_model.safetensors (default F32). The figures (energy kept, errors) are
   * those of the f32 factors, before a 16-bit rounding.
   */
  dtype?: FloatDtype;
}

/** The architecture fields two checkpoints must share for one to be an adapter of the other. */
const SAME_FIELDS = [
  "hidden_size",
  "intermediate_size",
  "num_hidden_layers",
  "num_attention_heads",
  "num_key_value_heads",
  "vocab_size",
  "head_dim",
  "tie_word_embeddings",
  "rms_norm_eps",
  "rope_theta",
  "max_position_embeddings",
  "model_type",
  "attention_bias",
  "mlp_bias",
  "rope_scaling",
  "sliding_window",
] as const;

function headDim(c: LlamaConfig): number {
  return c.head_dim ?? c.hidden_size / c.num_attention_heads;
}

/** A field's value with absent optional fields at their meaning (llama, no bias, none). */
function fieldValue(c: LlamaConfig, f: typeof SAME_FIELDS[number]): unknown {
  switch (f) {
    case "head_dim":
      return headDim(c);
    case "model_type":
      return c.model_type ?? "llama";
    case "attention_bias":
    case "mlp_bias":
      return c[f] === true;
    case "rope_scaling":
    case "sliding_window":
      return c[f] ?? null;
    default:
      return c[f];
  }
}

/** Throws AdapterModelMismatchError naming the first architecture field that differs. */
export function checkSameArchitecture(
  base: LlamaConfig,
  tuned: LlamaConfig,
  names = { base: "base", tuned: "tuned" },
): void {
  for (const f of SAME_FIELDS) {
    const a = fieldValue(base, f);
    const b = fieldValue(tuned, f);
    if (JSON.stringify(a) !== JSON.stringify(b)) {
      throw new AdapterModelMismatchError(
        `the base model ${names.base} and the tuned model ${names.tuned} differ in config.json ` +
          `"${f}" (${JSON.stringify(a)} against ${JSON.stringify(b)}): not the same architecture`,
        f,
      );
    }
  }
}

/** Every adapted matrix's rank, the nominal `r`, and where it came from. */
export interface RankPlan {
  ranks: Map<LinearSpec, number>;
  source: string;
}

/**
 * The adapter's rank per matrix: `explicit` exactly (an error where it exceeds min(out, in));
 * otherwise the method's rank bound for the run's settings, or `fallback` for a method without
 * one, capped by each matrix's min(out, in).
 */
export function planRanks(
  linears: readonly LinearSpec[],
  o: {
    explicit?: number | null;
    method?: string | null;
    settings?: { rank: number; workers: number } | null;
    fallback?: number | null;
  },
): RankPlan {
  const ranks = new Map<LinearSpec, number>();
  if (o.explicit != null) {
    if (!Number.isInteger(o.explicit) || o.explicit < 1) {
      throw new AdapterRankError(`--rank ${o.explicit} must be a positive integer`);
    }
    for (const l of linears) {
      const cap = Math.min(l.out, l.in);
      if (o.explicit > cap) {
        throw new AdapterRankError(
          `--rank ${o.explicit} is larger than ${l.name} [${l.out}, ${l.in}] allows ` +
            `(at most ${cap}); leave --rank out to cap each matrix at its own size`,
        );
      }
      ranks.set(l, o.explicit);
    }
    return { ranks, source: "--rank" };
  }
  const method = o.method ? findMethod(o.method) : undefined;
  const bound = method && o.settings ? method.rankBound(o.settings) : null;
  let nominal: number;
  let source: string;
  if (bound !== null && method) {
    nominal = bound;
    source = `${method.rankBoundLabel} = ${bound}`;
  } else if (o.fallback != null) {
    nominal = o.fallback;
    source = "--rank";
  } else {
    const why = !o.method
      ? "the tuned folder has no report.json naming its method"
      : !method
      ? `the method "${o.method}" is unknown`
      : !o.settings
      ? `the run's rank and workers are unknown`
      : `${o.method} has no rank bound (its ΔW may have full rank)`;
    throw new AdapterRankError(`${why}; pass --rank R for the adapter's rank`);
  }
  for (const l of linears) ranks.set(l, Math.min(nominal, l.out, l.in));
  return { ranks, source };
}

function svdFor(
  linear: LinearSpec,
  index: number,
  o: Pick<ExportAdapterOptions, "svd" | "svdNiter" | "seed">,
): TopSvdOptions {
  const svd = o.svd ?? "auto";
  const exact = svd === "exact" || (svd === "auto" && Math.max(...linear.shape) <= EXACT_SVD_MAX);
  return exact
    ? { method: "exact" }
    : { method: "randomized", niter: o.svdNiter ?? 4, seed: (o.seed ?? 0) + index };
}

async function folderEntries(dir: string): Promise<string[] | null> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  if (!st.isDirectory) throw new AdapterOutputError(`${dir} exists and is not a folder`);
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names;
}

/**
 * Throws AdapterOutputError when `dir` cannot take an adapter: not a folder, or not empty
 * without `overwrite`. Changes nothing (the job calls it before a run starts).
 */
export async function checkAdapterOut(dir: string, overwrite = false, flag = "--out") {
  const entries = await folderEntries(dir);
  if (entries && entries.length > 0 && !overwrite) {
    throw new AdapterOutputError(
      `${flag} ${dir} is not empty; pass --overwrite to replace its adapter files`,
    );
  }
}

/** Checks `dir` as above, removes the adapter files an earlier export left, creates it. */
export async function prepareAdapterOut(dir: string, overwrite = false, flag = "--out") {
  await checkAdapterOut(dir, overwrite, flag);
  const entries = await folderEntries(dir) ?? [];
  for (const e of entries.filter((e) => ADAPTER_FILES.includes(e))) {
    await Deno.remove(`${dir}/${e}`, { recursive: true });
  }
  await Deno.mkdir(dir, { recursive: true });
}

async function loadSide(dir: string, side: "base" | "tuned"): Promise<ModelFolder> {
  try {
    await Deno.stat(`${dir}/config.json`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    let hint = "";
    try {
      await Deno.stat(`${dir}/compare.json`);
      hint = ` (a --compare folder: name one method's folder, e.g. ${dir}/hd-pissa)`;
    } catch { /* not a --compare folder either */ }
    throw new AdapterMissingTensorError(
      `--${side} ${dir} is not a model folder: no config.json${hint}`,
      dir,
      "config.json",
    );
  }
  try {
    return await loadModelFolder(dir);
  } catch (e) {
    if (e instanceof MissingTensorError) {
      throw new AdapterMissingTensorError(
        `--${side} ${dir}: tensor "${e.tensor}" is missing (${e.message})`,
        dir,
        e.tensor!,
        { cause: e },
      );
    }
    throw e;
  }
}

async function readRunReport(tuned: string): Promise<RunReport | null> {
  try {
    await Deno.stat(`${tuned}/report.json`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  return await readReportJson(`${tuned}/report.json`);
}

function relChange(base: HostTensor, tuned: HostTensor): number | null {
  let d = 0, b = 0;
  for (let i = 0; i < base.data.length; i++) {
    const x = tuned.data[i] - base.data[i];
    d += x * x;
    b += base.data[i] * base.data[i];
  }
  if (d === 0) return null;
  return b > 0 ? Math.sqrt(d / b) : 1; // from zero: all of it is change
}

async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/**
 * Writes the PEFT LoRA adapter of `tuned` against `base` into `out` and returns what
 * `export_report.json` says. Everything is checked before the output folder is touched.
 * @throws {AdapterModelMismatchError} the two folders are not the same architecture
 * @throws {AdapterMissingTensorError} a folder lacks config.json or a tensor
 * @throws {AdapterRankError} no rank to use, or one larger than a matrix
 * @throws {AdapterOutputError} `out` is not empty (without `overwrite`)
 */
export async function exportAdapter(o: ExportAdapterOptions): Promise<AdapterExport> {
  const t0 = performance.now();
  await checkAdapterOut(o.out, o.overwrite);
  const report = o.method === undefined || o.settings === undefined || o.targets === undefined
    ? await readRunReport(o.tuned)
    : null;
  const method = o.method !== undefined ? o.method : report?.method ?? null;
  const settings = o.settings !== undefined ? o.settings : settingsOf(report);
  const targets = (o.targets?.length ? o.targets : null) ?? targetsOf(report) ?? LINEAR_KINDS;

  const [base, tuned] = [await loadSide(o.base, "base"), await loadSide(o.tuned, "tuned")];
  checkSameArchitecture(base.config, tuned.config, { base: o.base, tuned: o.tuned });
  const linears = adaptableLinears(base.config, targets);
  const plan = planRanks(linears, {
    explicit: o.rank,
    method,
    settings,
    fallback: o.fallbackRank,
  });

  const tensors = new Map<string, HostTensor>();
  const matrices: Record<string, MatrixExport> = {};
  let deltaSq = 0, keptSq = 0, errSq = 0, finalSq = 0;
  linears.forEach((l, i) => {
    const rank = plan.ranks.get(l)!;
    const made = factorDelta(
      base.tensors.get(l.name)!,
      tuned.tensors.get(l.name)!,
      rank,
      svdFor(l, i, o),
    );
    tensors.set(peftTensorName(l, "A"), made.A);
    tensors.set(peftTensorName(l, "B"), made.B);
    matrices[l.name] = made.stats;
    const s = made.stats;
    const dSq = s.delta_norm ** 2;
    deltaSq += dSq;
    keptSq += s.energy_kept * dSq;
    errSq += (s.rel_error * s.delta_norm) ** 2;
  });
  for (const l of linears) for (const v of tuned.tensors.get(l.name)!.data) finalSq += v * v;

  const adapted = new Set(linears.map((l) => l.name));
  const notInAdapter: AdapterExport["not_in_adapter"] = [];
  for (const spec of expectedTensors(base.config)) {
    if (adapted.has(spec.name)) continue;
    const change = relChange(base.tensors.get(spec.name)!, tuned.tensors.get(spec.name)!);
    if (change !== null) notInAdapter.push({ tensor: spec.name, rel_change: change });
  }

  const config = peftLoraConfig(o.baseName ?? o.base, targets, plan.ranks);
  const weights = serializeSafetensors(tensors, { format: "pt" }, o.dtype ?? "F32");
  const stats = Object.values(matrices);
  const result: AdapterExport = {
    folder: o.out,
    base: o.base,
    tuned: o.tuned,
    method,
    rank: config.r,
    rank_source: plan.source,
    lora_alpha: config.lora_alpha,
    target_modules: config.target_modules,
    rank_pattern: config.rank_pattern,
    energy_kept: deltaSq > 0 ? Math.min(1, keptSq / deltaSq) : 1,
    rel_error: deltaSq > 0 ? Math.sqrt(errSq / deltaSq) : 0,
    rel_error_weight: finalSq > 0 ? Math.sqrt(errSq / finalSq) : 0,
    min_energy_kept: Math.min(...stats.map((s) => s.energy_kept)),
    max_rel_error: Math.max(...stats.map((s) => s.rel_error)),
    matrices,
    not_in_adapter: notInAdapter,
    adapter_bytes: weights.length,
    ms: 0,
  };

  await prepareAdapterOut(o.out, o.overwrite);
  await writeFileAtomic(`${o.out}/${ADAPTER_WEIGHTS_FILE}`, weights);
  await writeJsonAtomic(`${o.out}/${ADAPTER_CONFIG_FILE}`, config);
  result.ms = Math.round(performance.now() - t0);
  await writeJsonAtomic(`${o.out}/${EXPORT_REPORT_FILE}`, result);
  return result;
}

function settingsOf(report: RunReport | null): { rank: number; workers: number } | null {
  const c = report?.config;
  if (!c || typeof c.rank !== "number" || typeof c.workers !== "number") return null;
  return { rank: c.rank, workers: c.workers };
}

function targetsOf(report: RunReport | null): LinearKind[] | null {
  const t = report?.config.targets;
  if (!Array.isArray(t) || t.length === 0) return null;
  return t.filter((x): x is LinearKind => (LINEAR_KINDS as readonly unknown[]).includes(x));
}

// Near 100 % the digits that matter are the last ones: 99.9998 %, not 100.00 %.
const pct = (v: number) => `${(100 * v).toFixed(v >= 0.99 && v < 1 ? 4 : 2)} %`;
const sig = (v: number) => v === 0 ? "0" : v < 1e-3 ? v.toExponential(2) : v.toPrecision(3);

/** A few lines for the user: rank, energy kept, errors, what the adapter leaves out. */
export function adapterSummary(e: AdapterExport): string[] {
  const n = Object.keys(e.matrices).length;
  const capped = Object.keys(e.rank_pattern).length;
  const lines = [
    `adapter ${e.folder}: rank ${e.rank} (${e.rank_source})${
      capped ? `, ${capped} matrices capped at their size` : ""
    }, ${n} matrices, ${(e.adapter_bytes / 1024).toFixed(1)} KiB`,
    `  energy of ΔW kept ${pct(e.energy_kept)} (lowest matrix ${pct(e.min_energy_kept)}); ` +
    `‖error‖/‖ΔW‖ ${sig(e.rel_error)} (highest matrix ${sig(e.max_rel_error)}); ` +
    `‖error‖/‖W‖ ${sig(e.rel_error_weight)}`,
  ];
  if (e.not_in_adapter.length > 0) {
    const worst = Math.max(...e.not_in_adapter.map((t) => t.rel_change));
    lines.push(
      `  not in the adapter: ${e.not_in_adapter.length} other tensor(s) changed ` +
        `(largest ‖Δ‖/‖W‖ ${sig(worst)}), e.g. ${e.not_in_adapter[0].tensor}`,
    );
  }
  return lines;
}

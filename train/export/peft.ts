/**
 * A weight change ΔW = W_final − W_base as a PEFT LoRA adapter (docs/architecture.md §9): per
 * adapted matrix the truncated SVD ΔW ≈ U_r S_r V_rᵀ in float64, folded into the two factors
 *
 * ```
 * B = U_r · diag(√S_r)      [out, r]      lora_B
 * A = diag(√S_r) · V_rᵀ     [r, in]       lora_A
 * ```
 *
 * with `lora_alpha = r`, so that PEFT's scaling `lora_alpha / r` is 1 and the adapted layer
 * computes `x·(W_base + B·A)ᵀ`. Splitting √S evenly keeps both factors at the same scale in f32.
 *
 * The names, shapes and config keys are PEFT's own (`PeftModel.save_pretrained` of a LoRA model
 * of `LlamaForCausalLM`), which vLLM and other servers read as well.
 * @module
 */
import type { LinearKind, LinearSpec } from "../../model/config.ts";
import type { HostTensor } from "../../model/safetensors.ts";
import { topSvd, type TopSvdOptions } from "../linalg/svd.ts";

/** The file names of a PEFT adapter folder, and the export's own report beside them. */
export const ADAPTER_CONFIG_FILE = "adapter_config.json";
export const ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors";
export const EXPORT_REPORT_FILE = "export_report.json";

/**
 * The PEFT name of a factor of an adapted linear: the module path under PEFT's wrapper
 * (`base_model.model.` + the Hugging Face module name), then `lora_A.weight` or `lora_B.weight`
 * (the adapter's own name is left out when saved).
 */
export function peftTensorName(linear: Pick<LinearSpec, "name">, factor: "A" | "B"): string {
  const module = linear.name.replace(/\.weight$/, "");
  return `base_model.model.${module}.lora_${factor}.weight`;
}

/**
 * The key of a matrix in `rank_pattern`/`alpha_pattern`. PEFT matches a key as a regular
 * expression against the end of the module's name after a dot (`.*\.{key}$` in older versions,
 * `(.*\.)?({key})$` in newer ones), so the module path without its leading `model.` matches in
 * both.
 */
export function peftPatternKey(linear: Pick<LinearSpec, "name">): string {
  return linear.name.replace(/\.weight$/, "").replace(/^model\./, "");
}

/** `adapter_config.json` of a LoRA adapter whose scaling is 1 for every matrix. */
export interface PeftLoraConfig {
  peft_type: "LORA";
  task_type: "CAUSAL_LM";
  base_model_name_or_path: string;
  r: number;
  lora_alpha: number;
  target_modules: string[];
  lora_dropout: number;
  bias: "none";
  fan_in_fan_out: boolean;
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
  modules_to_save: null;
  inference_mode: boolean;
}

/**
 * The adapter's config: `r` is the largest rank, and each matrix of a smaller rank (one capped
 * by its own size) is listed in `rank_pattern` with the same value in `alpha_pattern`, so the
 * scaling `alpha / r` is 1 everywhere. Only keys PEFT's `LoraConfig` knows are written (older
 * versions refuse unknown ones).
 */
export function peftLoraConfig(
  base: string,
  targets: readonly LinearKind[],
  ranks: ReadonlyMap<LinearSpec, number>,
): PeftLoraConfig {
  const r = Math.max(...ranks.values());
  const rank_pattern: Record<string, number> = {};
  for (const [l, k] of ranks) if (k !== r) rank_pattern[peftPatternKey(l)] = k;
  return {
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    base_model_name_or_path: base,
    r,
    lora_alpha: r,
    target_modules: [...targets],
    lora_dropout: 0,
    bias: "none",
    fan_in_fan_out: false,
    rank_pattern,
    alpha_pattern: { ...rank_pattern },
    modules_to_save: null,
    inference_mode: true,
  };
}

/** How well one matrix's adapter reproduces its ΔW. */
export interface MatrixExport {
  /** The adapter's rank for this matrix. */
  rank: number;
  /** `[out, in]`. */
  shape: [number, number];
  /** Which SVD found the leading components. */
  svd: "exact" | "randomized";
  /** Σσ² kept / Σσ² of ΔW (‖ΔW‖²_F); 1 for a ΔW that is zero. */
  energy_kept: number;
  /** ‖W_base + B·A − W_final‖_F / ‖W_final − W_base‖_F; 0 for a ΔW that is zero. */
  rel_error: number;
  /** ‖W_base + B·A − W_final‖_F / ‖W_final‖_F. */
  rel_error_weight: number;
  /** ‖ΔW‖_F. */
  delta_norm: number;
  /** The singular values kept, descending. */
  singular_values: number[];
}

/** One matrix's factors (f32, PEFT's shapes) and how close they come. */
export interface MatrixAdapter {
  /** `[r, in]`. */
  A: HostTensor;
  /** `[out, r]`. */
  B: HostTensor;
  stats: MatrixExport;
}

/**
 * The rank-`rank` adapter of `final − base` (both `[out, in]`, the same shape): the SVD in
 * float64 of the exact f32 differences, the factors rounded to f32, and the error measured with
 * those rounded factors.
 */
export function factorDelta(
  base: HostTensor,
  final: HostTensor,
  rank: number,
  svd: TopSvdOptions = {},
): MatrixAdapter {
  const [m, n] = final.shape;
  const delta = new Float64Array(m * n);
  let deltaSq = 0, finalSq = 0;
  for (let i = 0; i < delta.length; i++) {
    const d = final.data[i] - base.data[i]; // exact: both are f32
    delta[i] = d;
    deltaSq += d * d;
    finalSq += final.data[i] * final.data[i];
  }
  const A = new Float32Array(rank * n);
  const B = new Float32Array(m * rank);
  let kept: number[] = [];
  if (deltaSq > 0) {
    const r = topSvd(delta, m, n, rank, svd);
    kept = Array.from(r.S);
    for (let c = 0; c < rank; c++) {
      const root = Math.sqrt(r.S[c]);
      for (let i = 0; i < m; i++) B[i * rank + c] = r.U[i * r.k + c] * root;
      for (let j = 0; j < n; j++) A[c * n + j] = root * r.Vt[c * n + j];
    }
  } else {
    kept = new Array(rank).fill(0);
  }
  // The residual ΔW − B·A with the f32 factors, in float64.
  let errSq = 0;
  const row = new Float64Array(n);
  for (let i = 0; i < m; i++) {
    row.fill(0);
    for (let c = 0; c < rank; c++) {
      const b = B[i * rank + c];
      if (b === 0) continue;
      const a = c * n;
      for (let j = 0; j < n; j++) row[j] += b * A[a + j];
    }
    for (let j = 0; j < n; j++) {
      const e = delta[i * n + j] - row[j];
      errSq += e * e;
    }
  }
  let keptSq = 0;
  for (const s of kept) keptSq += s * s;
  const err = Math.sqrt(errSq);
  return {
    A: { shape: [rank, n], data: A },
    B: { shape: [m, rank], data: B },
    stats: {
      rank,
      shape: [m, n],
      svd: svd.method ?? "exact",
      energy_kept: deltaSq > 0 ? Math.min(1, keptSq / deltaSq) : 1,
      rel_error: deltaSq > 0 ? err / Math.sqrt(deltaSq) : 0,
      rel_error_weight: finalSq > 0 ? err / Math.sqrt(finalSq) : 0,
      delta_norm: Math.sqrt(deltaSq),
      singular_values: kept,
    },
  };
}

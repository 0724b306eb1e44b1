/**
 * Reading a PEFT LoRA adapter folder back and applying it as PEFT does, written independently of
 * the exporter (train/export/), for the tests that check an export against the tuned weights.
 */
import assert from "node:assert/strict";
import type { LinearSpec } from "../../model/config.ts";
import { type HostTensor, readSafetensors } from "../../model/safetensors.ts";
import type { AdapterExport } from "../../train/export/export.ts";

export interface ReadAdapter {
  config: Record<string, unknown>;
  tensors: Map<string, HostTensor>;
  report: AdapterExport;
}

export async function readAdapter(dir: string): Promise<ReadAdapter> {
  return {
    config: JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`)),
    tensors: (await readSafetensors(`${dir}/adapter_model.safetensors`)).tensors,
    report: JSON.parse(await Deno.readTextFile(`${dir}/export_report.json`)),
  };
}

/**
 * PEFT's forward on one matrix, written out independently of the exporter: the module's rank and
 * alpha from `rank_pattern`/`alpha_pattern` (matched as PEFT matches them), else `r` and
 * `lora_alpha`; `W = W_base + (alpha / rank)·B·A` in float64. Returns ‖W − W_final‖ / ‖ΔW‖.
 */
export function appliedError(
  a: ReadAdapter,
  l: LinearSpec,
  base: HostTensor,
  final: HostTensor,
): { rel: number; rank: number } {
  const module = l.name.replace(/\.weight$/, "");
  const pick = (pattern: unknown, fallback: number) => {
    for (const [key, v] of Object.entries(pattern as Record<string, number>)) {
      if (new RegExp(`(.*\\.)?(${key})$`).test(module)) return v;
    }
    return fallback;
  };
  const rank = pick(a.config.rank_pattern, a.config.r as number);
  const alpha = pick(a.config.alpha_pattern, a.config.lora_alpha as number);
  const A = a.tensors.get(`base_model.model.${module}.lora_A.weight`)!;
  const B = a.tensors.get(`base_model.model.${module}.lora_B.weight`)!;
  assert.deepEqual(A.shape, [rank, l.in], `${module} lora_A`);
  assert.deepEqual(B.shape, [l.out, rank], `${module} lora_B`);
  let err = 0, delta = 0;
  for (let i = 0; i < l.out; i++) {
    for (let j = 0; j < l.in; j++) {
      let ba = 0;
      for (let c = 0; c < rank; c++) ba += B.data[i * rank + c] * A.data[c * l.in + j];
      const w = base.data[i * l.in + j] + (alpha / rank) * ba;
      err += (w - final.data[i * l.in + j]) ** 2;
      delta += (final.data[i * l.in + j] - base.data[i * l.in + j]) ** 2;
    }
  }
  return { rel: Math.sqrt(err / delta), rank };
}

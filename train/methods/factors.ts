/**
 * How adapter factors travel as named tensors: the driver's initial factors through the object
 * store, and the adapters inside a checkpoint's shared file. The only place that writes or reads
 * the names `<weight>.A<j>`, `<weight>.B<j>` (pair j: worker j's slice for HD-PiSSA, the one
 * shared adapter j = 0 for LoRA/PiSSA) and `<weight>.residual` (PiSSA's W − s·B·A).
 * @module
 */
import { adaptableLinears, type LinearKind, type LlamaConfig } from "../../model/config.ts";
import type { HostTensor } from "../../model/safetensors.ts";
import type { AdapterFactors } from "./adapter_init.ts";
import type { MethodInit } from "./init.ts";

const FACTOR_KEY = /^(.*)\.(A|B)(\d+)$/;
const RESIDUAL = ".residual";

/** The name of factor A or B of pair j of a weight. */
export function factorKey(weight: string, part: "A" | "B", j: number): string {
  return `${weight}.${part}${j}`;
}

/** Whether a tensor name is an adapter factor (as opposed to a weight or a residual). */
export function isFactorKey(key: string): boolean {
  return FACTOR_KEY.test(key);
}

/** The factors and residuals of an init as named tensors (shapes from the model's config). */
export function initToTensors(
  config: LlamaConfig,
  o: { rank: number; targets: readonly LinearKind[] },
  init: MethodInit,
): Map<string, HostTensor> {
  const tensors = new Map<string, HostTensor>();
  for (const l of adaptableLinears(config, o.targets)) {
    init.factors.get(l.name)?.forEach((p, j) => {
      tensors.set(factorKey(l.name, "A", j), { shape: [o.rank, l.in], data: p.A });
      tensors.set(factorKey(l.name, "B", j), { shape: [l.out, o.rank], data: p.B });
    });
    const res = init.residuals.get(l.name);
    if (res) tensors.set(`${l.name}${RESIDUAL}`, { shape: [l.out, l.in], data: res });
  }
  return tensors;
}

/**
 * The init back from named tensors. Pairs j ≥ `pairs` are passed over, and so are tensors of
 * any other name (the weights of a checkpoint's shared file).
 */
export function initFromTensors(
  tensors: ReadonlyMap<string, HostTensor>,
  pairs: number,
): MethodInit {
  const factors = new Map<string, AdapterFactors[]>();
  const residuals = new Map<string, Float32Array>();
  for (const [key, t] of tensors) {
    const m = FACTOR_KEY.exec(key);
    if (m) {
      const list = factors.get(m[1]) ?? [];
      const j = Number(m[3]);
      if (j >= pairs) continue;
      list[j] = {
        ...(list[j] ?? { A: new Float32Array(), B: new Float32Array() }),
        [m[2]]: t.data,
      };
      factors.set(m[1], list);
    } else if (key.endsWith(RESIDUAL)) {
      residuals.set(key.slice(0, -RESIDUAL.length), t.data);
    }
  }
  return { factors, residuals };
}

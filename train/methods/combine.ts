/**
 * The driver's side of a step: check each worker's contribution, then combine them into the one
 * update every worker applies. The two ways to combine live here; each method names its own
 * (HD-PiSSA: all K contributions side by side; the data-parallel methods: their mean).
 * @module
 */
import { DomainError } from "../../core/errors.ts";
import { z } from "zod";
import type { Layout } from "./layout.ts";

/** A contribution that must not be applied: wrong size, or a NaN/Inf inside. */
export class ContributionError extends DomainError {
  static override readonly code: string = "CONTRIBUTION";
  static readonly fields = z.object({
    worker: z.number().int(),
    kind: z.enum(["shape", "nonfinite"]),
  });
  readonly worker: number;
  readonly kind: "shape" | "nonfinite";
  constructor(worker: number, kind: "shape" | "nonfinite", message: string) {
    super(message);
    this.worker = worker;
    this.kind = kind;
  }
}

/** Throws ContributionError unless `c` has the layout's length and only finite values. */
export function validateContribution(c: Float32Array, layout: Layout, worker: number): void {
  if (!(c instanceof Float32Array) || c.length !== layout.length) {
    throw new ContributionError(
      worker,
      "shape",
      `worker ${worker} sent ${c?.length ?? "no"} floats, expected ${layout.length}`,
    );
  }
  for (let i = 0; i < c.length; i++) {
    if (!Number.isFinite(c[i])) {
      const seg = layout.segments.find((s) => i >= s.offset && i < s.offset + s.length)!;
      throw new ContributionError(
        worker,
        "nonfinite",
        `worker ${worker} sent ${c[i]} in ${seg.part} of ${seg.name} (element ${i - seg.offset})`,
      );
    }
  }
}

/** HD-PiSSA's update: the K contributions side by side, in worker order. */
export function concatContributions(contributions: readonly Float32Array[]): Float32Array {
  const n = contributions[0].length;
  const out = new Float32Array(n * contributions.length);
  contributions.forEach((c, k) => out.set(c, k * n));
  return out;
}

/**
 * The data-parallel update: the element-wise mean, summed in worker order in float64 and rounded
 * once, so that the result does not depend on arrival order.
 */
export function meanContributions(contributions: readonly Float32Array[]): Float32Array {
  const K = contributions.length;
  const n = contributions[0].length;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let k = 0; k < K; k++) s += contributions[k][i];
    out[i] = s / K;
  }
  return out;
}

/**
 * PiSSA (docs/architecture.md §2, baseline): one adapter from the top r singular components (HD-PiSSA's
 * k = 0 slice), trained data-parallel; W is replaced by the residual W − s·B·A, and the merged
 * model is W_res + s·B·A.
 * @module
 */
import { pissaInit } from "./adapter_init.ts";
import { adapterMethod } from "./data_parallel.ts";
import type { TrainingMethod } from "./method.ts";

export const pissa: TrainingMethod<"pissa"> = adapterMethod({
  name: "pissa",
  summary: "one adapter from the top r singular components, data-parallel; W becomes the residual",
  rankBoundLabel: "2r",
  rankBound: (r) => 2 * r,
  color: "#00798c",
  initMatrix: ({ linear, W, svd }, o) => {
    const p = pissaInit(W, o.rank, o.alpha, { name: linear.name, svd });
    return { factors: [{ A: p.A, B: p.B }], residual: p.residual };
  },
  svdComponents: (rank) => rank,
  residual: true,
  initLog: (matrices) => `initialising pissa adapters (SVD of ${matrices} matrices)`,
});

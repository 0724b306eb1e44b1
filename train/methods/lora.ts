/**
 * LoRA (docs/architecture.md §2, baseline): A Kaiming-uniform (a = √5, as PEFT), B = 0, trained
 * data-parallel; the effective weight is W + s·B·A.
 * @module
 */
import { loraInit } from "./adapter_init.ts";
import { adapterMethod } from "./data_parallel.ts";
import type { TrainingMethod } from "./method.ts";

export const lora: TrainingMethod<"lora"> = adapterMethod({
  name: "lora",
  summary: "one adapter, A Kaiming-uniform and B = 0, data-parallel",
  rankBoundLabel: "r",
  rankBound: (r) => r,
  color: "#e09f3e",
  // A comes from one generator in model order, so every worker could redo it identically.
  initMatrix: ({ linear, rng }, o) => ({
    factors: [loraInit(linear.shape, o.rank, rng, linear.name)],
  }),
  residual: false,
  initLog: (matrices) => `initialising lora adapters on ${matrices} matrices`,
});

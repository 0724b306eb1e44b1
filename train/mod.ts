/**
 * Training: methods (HD-PiSSA, PiSSA, LoRA, full), SVD and adapter init, optimizers' host side,
 * schedules, data sets and batching, evaluation, effective rank, checkpoints, reports and PEFT
 * adapter export.
 * @module
 */
export * from "../core/rng.ts";
export * from "./data/mod.ts";
export * from "./optim/schedule.ts";
export * from "./linalg/svd.ts";
export * from "./methods/adapter_init.ts";
export * from "./report/effective_rank.ts";
export * from "./eval/score.ts";
export * from "./eval/evaluate.ts";
export * from "./cli/options.ts";
export * from "./checkpoint/checkpoint.ts";
export * from "./checkpoint/checksum.ts";
export * from "./report/report.ts";
export * from "./report/html.ts";
export * from "./report/compare_table.ts";
export * from "./cli/progress.ts";
export * from "./methods/method.ts";
export { findMethod, getMethod, TRAINING_METHODS, UnknownMethodError } from "./methods/registry.ts";
export * from "./methods/hd_pissa.ts";
export * from "./methods/pissa.ts";
export * from "./methods/lora.ts";
export * from "./methods/full.ts";
export * from "./methods/data_parallel.ts";
export * from "./methods/layout.ts";
export * from "./methods/init.ts";
export * from "./methods/factors.ts";
export * from "./methods/combine.ts";
export * from "./methods/worker.ts";
export { makeBenchmark } from "./datagen/benchmark.ts";
export { generateCorpus } from "./datagen/corpus.ts";
export * from "./cli/model_checks.ts";
export * from "./export/errors.ts";
export * from "./export/peft.ts";
export * from "./export/export.ts";
export * from "./export/run.ts";

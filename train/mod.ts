/**
 * Training: methods (HD-PiSSA, PiSSA, LoRA, full), SVD and adapter init, optimizers' host side,
 * schedules, data sets and batching, evaluation, effective rank, checkpoints and reports.
 * @module
 */
export * from "./rng.ts";
export * from "./data.ts";
export * from "./schedule.ts";
export * from "./svd.ts";
export * from "./adapter_init.ts";
export * from "./effective_rank.ts";
export * from "./eval_score.ts";
export * from "./evaluate.ts";
export * from "./options.ts";
export * from "./checkpoint.ts";
export * from "./checksum.ts";
export * from "./report.ts";
export * from "./report_html.ts";
export * from "./compare_table.ts";
export * from "./progress.ts";
export * from "./methods/layout.ts";
export * from "./methods/init.ts";
export * from "./methods/combine.ts";
export * from "./methods/worker.ts";
export { makeBenchmark } from "./tasks/benchmark.ts";
export { generateCorpus } from "./corpus.ts";

/**
 * The study's files, as zod schemas: one result per finished run (`results/<id>.json`), the
 * settings a folder was started with (`settings.json`), and `study.json`.
 * @module
 */
import { z } from "zod";
import { STUDY_METHODS, STUDY_PARTS, STUDY_TASKS } from "./plan.ts";

export const runSpecSchema = z.object({
  id: z.string(),
  phase: z.enum(["tune", "rank", "control", "mute"]),
  task: z.enum(STUDY_TASKS),
  method: z.enum(STUDY_METHODS),
  rank: z.number().int().min(0),
  lr: z.number().positive(),
  lrFactor: z.number().positive(),
  seed: z.number().int().min(0),
  evalOn: z.enum(["valid", "test"]),
  series: z.string(),
  aggregate: z.enum(["mean", "sum"]),
  sliceScale: z.enum(["svd", "equal"]),
  batchSize: z.number().int().positive(),
  mute: z.union([z.literal("exact"), z.number().positive()]),
  muteRescale: z.enum(["inverse", "fixed"]),
});

/** One finished run. */
export const runResultSchema = z.object({
  spec: runSpecSchema,
  /** Exact-match accuracy on `spec.evalOn` after fine-tuning, in [0, 1]. */
  accuracy: z.number().min(0).max(1),
  tasks: z.record(z.string(), z.number().min(0).max(1)),
  final_loss: z.number().nullable(),
  /** The method's first-order bound on rank(ΔW) (2Kr, 2r, r); null for full. */
  total_rank: z.number().int().positive().nullable(),
  optimizer_bytes_per_worker: z.number().min(0).nullable(),
  steps: z.number().int().min(0),
  step_ms_mean: z.number().nullable(),
  /** Wall time of the whole run (start of the job to its report). */
  wall_ms: z.number().min(0),
  finished_at: z.string(),
});
export type RunResult = z.infer<typeof runResultSchema>;

export const settingsSchema = z.object({
  quick: z.boolean(),
  tasks: z.array(z.enum(STUDY_TASKS)),
  methods: z.array(z.enum(STUDY_METHODS)),
  parts: z.array(z.enum(STUDY_PARTS)),
  steps: z.number().int().positive(),
  seeds: z.number().int().positive(),
  workers: z.number().int().positive(),
  batchSize: z.number().int().positive(),
  evalPerTask: z.number().int().positive(),
  model: z.string(),
  data: z.record(z.string(), z.object({ train: z.string(), test: z.string() })),
});
export type StoredSettings = z.infer<typeof settingsSchema>;

const summarySchema = z.object({
  n: z.number().int(),
  mean: z.number(),
  sd: z.number().nullable(),
});
const differenceSchema = z.object({
  seeds: z.array(z.number().int()),
  diffs: z.array(z.number()),
  mean: z.number(),
  lo: z.number(),
  hi: z.number(),
  level: z.number(),
  resamples: z.number().int(),
});

export const pointSchema = z.object({
  task: z.enum(STUDY_TASKS),
  phase: z.enum(["rank", "control", "mute"]),
  series: z.string(),
  method: z.enum(STUDY_METHODS),
  rank: z.number().int(),
  total_rank: z.number().int().nullable(),
  optimizer_bytes_per_worker: z.number().nullable(),
  lr: z.number(),
  mute: z.union([z.literal("exact"), z.number()]),
  accuracy: summarySchema,
  by_seed: z.record(z.string(), z.number()),
});
export type Point = z.infer<typeof pointSchema>;

export const comparisonSchema = z.object({
  task: z.enum(STUDY_TASKS),
  /** What is compared, e.g. "hd-pissa r=4 − pissa r=4 (equal per-worker rank)". */
  label: z.string(),
  a: z.string(),
  b: z.string(),
  difference: differenceSchema,
});
export type Comparison = z.infer<typeof comparisonSchema>;

export const studyJsonSchema = z.object({
  settings: settingsSchema,
  runs: z.object({ planned: z.number().int(), finished: z.number().int() }),
  tuning: z.array(z.object({
    task: z.enum(STUDY_TASKS),
    method: z.enum(STUDY_METHODS),
    grid: z.array(z.object({ lr: z.number(), valid_accuracy: z.number().nullable() })),
    best: z.number().nullable(),
  })),
  points: z.array(pointSchema),
  comparisons: z.array(comparisonSchema),
  budget: z.object({
    planned_runs: z.number().int(),
    estimated_s: z.number(),
    step_s: z.number(),
    overhead_s: z.number(),
    measured_mean_run_s: z.number().nullable(),
  }),
});
export type StudyJson = z.infer<typeof studyJsonSchema>;

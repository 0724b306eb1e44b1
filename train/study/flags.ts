/**
 * `deno task study`'s flags, declared once. `--quick` picks a smaller grid and smaller
 * defaults (a flag given still wins); `--plan` prints the grid and its budget and runs nothing.
 * @module
 */
import { defineFlags, FlagError } from "../../cli/flags.ts";
import { PROJECT_ROOT } from "../cli/options.ts";
import { DEFAULT_BUDGET } from "./budget.ts";
import { STUDY_METHODS, STUDY_PARTS, STUDY_TASKS } from "./plan.ts";

const fromRoot = (p: string) => decodeURIComponent(new URL(p, PROJECT_ROOT).pathname);

const GRID = "grid";
const RUNS = "runs";
const OUT = "output and budget";

export const STUDY_FLAGS = defineFlags({
  name: "study",
  about: "When does HD-PiSSA's extra rank pay? Runs the rank study (LoRA, PiSSA, HD-PiSSA, full\n" +
    "at several ranks, tuned rates, several seeds), its controls and the mute ablation, one\n" +
    "fine-tuning job per run. Resumable: call it again with the same flags to continue.",
  usage: "deno task study [flags]",
  groups: [GRID, RUNS, OUT],
  flags: {
    quick: {
      type: "boolean",
      help: "the short version (about ten minutes): one rank per method, one rate, one seed, " +
        "the codes task, one control and γ = 1e-32",
      group: GRID,
    },
    tasks: {
      type: "list",
      choices: STUDY_TASKS,
      minItems: 1,
      itemName: "task",
      default: (o) => (o.quick ? ["codes"] : [...STUDY_TASKS]),
      defaultText: "bench,codes (--quick: codes)",
      help: "bench: the shipped benchmark; codes: the capacity-bound task (data/codes)",
      group: GRID,
    },
    methods: {
      type: "list",
      choices: STUDY_METHODS,
      minItems: 1,
      itemName: "method",
      default: [...STUDY_METHODS],
      defaultText: "all",
      help: STUDY_METHODS.join(","),
      group: GRID,
    },
    parts: {
      type: "list",
      choices: STUDY_PARTS,
      minItems: 1,
      itemName: "part",
      default: [...STUDY_PARTS],
      defaultText: "all",
      help: "rank: the curves; controls: aggregate, rate ×K, slice scale, batch ×4; mute: γ",
      group: GRID,
    },
    seeds: {
      type: "int",
      min: 1,
      default: (o) => (o.quick ? 1 : 3),
      defaultText: "3 (--quick: 1)",
      help: "seeds per point (0, 1, …): data order and init",
      group: GRID,
    },
    steps: {
      type: "int",
      min: 1,
      default: () => 60,
      defaultText: "60, sized to the budget",
      help: "optimizer steps of every run",
      group: RUNS,
    },
    workers: { type: "int", min: 1, default: 4, metavar: "K", help: "GPU workers", group: RUNS },
    "batch-size": {
      type: "int",
      min: 1,
      default: 16,
      help: "global batch (the batch ×4 control uses four times it)",
      group: RUNS,
    },
    "eval-per-task": {
      type: "int",
      min: 1,
      default: (o) => (o.quick ? 25 : 50),
      defaultText: "50 (--quick: 25)",
      help: "examples per task evaluated",
      group: RUNS,
    },
    model: {
      type: "string",
      default: fromRoot("models/base"),
      defaultText: "models/base",
      metavar: "DIR",
      help: "model folder",
      group: RUNS,
    },
    out: {
      type: "string",
      nonEmpty: true,
      default: (o) => (o.quick ? "runs/study-quick" : "runs/study"),
      defaultText: "runs/study (--quick: runs/study-quick)",
      metavar: "DIR",
      help: "the study folder (settings.json, results/, runs/, study.json, study.html)",
      group: OUT,
    },
    plan: {
      type: "boolean",
      help: "print the grid and its estimated time; run nothing",
      group: OUT,
    },
    "step-seconds": {
      type: "number",
      gt: 0,
      default: DEFAULT_BUDGET.stepSeconds,
      help: "seconds per step at batch 16, for the estimate (measured here: see README)",
      group: OUT,
    },
    "run-overhead-seconds": {
      type: "number",
      min: 0,
      default: DEFAULT_BUDGET.overheadSeconds,
      help: "seconds per run besides its steps (workers, SVD, evaluations), for the estimate",
      group: OUT,
    },
  },
  check(o) {
    if (o.batchSize % (o.workers * 4) !== 0) {
      throw new FlagError(
        `--batch-size ${o.batchSize} must be a multiple of --workers × 4 (the micro-batch)`,
        "batch-size",
      );
    }
  },
});

export type StudyFlags = typeof STUDY_FLAGS.Options;

/**
 * The rank study (README, "When to use HD-PiSSA"): LoRA and PiSSA at r = 4…32, HD-PiSSA at
 * r = 1…8 (K = 4), full fine-tuning, each at its tuned rate with several seeds, on the shipped
 * benchmark and the capacity-bound codes task; the controls and the mute ablation. Each run is
 * one fine-tuning job (actors/job.ts). Resumable.
 *
 *   deno task study --plan          the grid and its estimated time; runs nothing
 *   deno task study --quick         the ten-minute version
 *   deno task study                 the whole study (call again to continue after a stop)
 */
import { runFinetune } from "../actors/job.ts";
import { STUDY_FLAGS } from "../train/study/flags.ts";
import { runStudy, type StudyOptions } from "../train/study/run.ts";
import { planLines, summaryLines } from "../train/study/plan_text.ts";
import { DEFAULT_BUDGET } from "../train/study/budget.ts";

if (import.meta.main) {
  const { options: f } = STUDY_FLAGS.main();
  const o: StudyOptions = {
    quick: f.quick,
    tasks: f.tasks,
    methods: f.methods,
    parts: f.parts,
    steps: f.steps,
    seeds: f.seeds,
    workers: f.workers,
    batchSize: f.batchSize,
    out: f.out,
    model: f.model,
    evalPerTask: f.evalPerTask,
    budget: {
      stepSeconds: f.stepSeconds,
      overheadSeconds: f.runOverheadSeconds,
      referenceBatch: DEFAULT_BUDGET.referenceBatch,
    },
  };
  if (f.plan) {
    const finished = new Set<string>();
    try {
      for await (const e of Deno.readDir(`${o.out}/results`)) {
        if (e.name.endsWith(".json")) finished.add(e.name.slice(0, -5));
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    planLines(o, o.budget, finished).forEach((l) => console.log(l));
    Deno.exit(0);
  }
  try {
    const { study } = await runStudy(o, {
      log: (l) => console.error(l),
      finetune: async (options) =>
        (await runFinetune(options, { log: (l) => console.error(l) }))[0],
    });
    summaryLines(study).forEach((l) => console.log(l));
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    console.error(`study: ${err.name}: ${err.message}`);
    if (Deno.env.get("HD_DEBUG")) console.error(err);
    Deno.exit(1);
  }
}

/**
 * The multi-task benchmark: four generated task families sized for a model of about a million
 * parameters reading bytes (every prompt + response fits in 48 bytes), with fixed, disjoint
 * train and test splits.
 * @module
 */
import { Rng } from "../../core/rng.ts";
import { makeArith } from "./arith.ts";
import { makeCode } from "./code.ts";
import { makeFacts } from "./facts.ts";
import type { SplitSizes, TaskExample, TaskSplit } from "./format.ts";
import { KB_SEED, makeKnowledgeBase } from "./kb.ts";
import { makeStrings } from "./strings.ts";

export const BENCHMARK_SEED = 4;
export const TASK_NAMES = ["arith", "code", "facts", "strings"] as const;
export type TaskName = typeof TASK_NAMES[number];

export const DEFAULT_SIZES: SplitSizes = { train: 800, test: 150 };

export interface BenchmarkOptions {
  seed?: number;
  /** Examples per family and split (facts rounds test to a multiple of 6). */
  sizes?: SplitSizes;
  kbSeed?: number;
}

/**
 * Every family's splits, each family drawing from its own generator seeded from `seed`, then
 * each split shuffled so that file order mixes the families.
 */
export function makeBenchmark(opts: BenchmarkOptions = {}): TaskSplit {
  const rng = new Rng(opts.seed ?? BENCHMARK_SEED);
  const sizes = opts.sizes ?? DEFAULT_SIZES;
  const kb = makeKnowledgeBase(opts.kbSeed ?? KB_SEED);
  const makers: Record<TaskName, (r: Rng) => TaskSplit> = {
    arith: (r) => makeArith(r, sizes),
    code: (r) => makeCode(r, sizes),
    facts: (r) => makeFacts(r, kb, sizes),
    strings: (r) => makeStrings(r, sizes),
  };
  const train: TaskExample[] = [];
  const test: TaskExample[] = [];
  for (const name of TASK_NAMES) {
    const split = makers[name](new Rng(rng.u32()));
    train.push(...split.train);
    test.push(...split.test);
  }
  return { train: rng.shuffle(train), test: rng.shuffle(test) };
}

/** JSONL text of examples, one `{"prompt","response","task"}` object per line. */
export function toJsonl(examples: readonly TaskExample[]): string {
  return examples.map((e) =>
    JSON.stringify({ prompt: e.prompt, response: e.response, task: e.task }) + "\n"
  ).join("");
}

/**
 * Drawing distinct examples into disjoint train and test splits. Two examples are the same when
 * their prompts are equal (the prompt determines the answer), so no test prompt is ever trained
 * on.
 * @module
 */
import { DomainError } from "../../core/errors.ts";
import type { SplitSizes, TaskExample, TaskSplit } from "./format.ts";

/** A generator that cannot find enough distinct prompts. */
export class TaskGenerationError extends DomainError {
  static override readonly code: string = "TASK_GENERATION";
}

/**
 * Calls `draw` until it has `sizes.test + sizes.train` distinct prompts (skipping any in
 * `exclude`); the first `sizes.test` go to test, the rest to train. Draws are independent, so
 * this assignment does not bias either split.
 */
export function drawSplit(
  task: string,
  sizes: SplitSizes,
  draw: () => { prompt: string; response: string },
  exclude: ReadonlySet<string> = new Set(),
): TaskSplit {
  const want = sizes.train + sizes.test;
  const seen = new Set<string>();
  const all: TaskExample[] = [];
  const maxDraws = 100 * want + 1000;
  for (let i = 0; i < maxDraws && all.length < want; i++) {
    const { prompt, response } = draw();
    if (seen.has(prompt) || exclude.has(prompt)) continue;
    seen.add(prompt);
    all.push({ prompt, response, task });
  }
  if (all.length < want) {
    throw new TaskGenerationError(
      `task ${task}: found only ${all.length} distinct prompts of the ${want} asked for`,
    );
  }
  return { test: all.slice(0, sizes.test), train: all.slice(sizes.test) };
}

/**
 * The benchmark's instruction format and example type. The general pretraining corpus never
 * contains this format, so a base model scores low on the benchmark until fine-tuned on it.
 * @module
 */

/** One benchmark example; `task` is its family's name. */
export interface TaskExample {
  prompt: string;
  response: string;
  task: string;
}

/** A family's (or the whole benchmark's) fixed splits. */
export interface TaskSplit {
  train: TaskExample[];
  test: TaskExample[];
}

/** Number of examples a family makes for each split. */
export interface SplitSizes {
  train: number;
  test: number;
}

export const PROMPT_PREFIX = "Q: ";
export const PROMPT_SUFFIX = "\nA: ";

/** The prompt that asks `question`. */
export function ask(question: string): string {
  return PROMPT_PREFIX + question + PROMPT_SUFFIX;
}

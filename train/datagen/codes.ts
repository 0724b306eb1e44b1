/**
 * `codes`: a capacity-bound memorisation task for the rank study (docs/architecture.md §9, the
 * study). Each of a few dozen invented keys has an arbitrary three-letter code that no
 * pretraining text contains, so the only way to answer is to store every key→code pair in the
 * weights. Training states each key's code ("Q: Code of bafir\nA: " → "kqz"), every line
 * `repeats` times; the test asks every key once, in the same words.
 *
 * A memorisation task's test can only ask facts that were trained, so here, unlike the shipped
 * benchmark, every test prompt is also a training prompt: the test measures how many of the
 * trained facts the update has stored after the study's steps, not generalisation. The repeats
 * are there for the study's validation split (a tenth of the training lines, drawn at random):
 * a held-out line nearly always has a copy left in training, so tuning, too, scores recall of
 * trained facts rather than facts no run could know.
 * @module
 */
import { Rng } from "../../core/rng.ts";
import { ask, type TaskExample, type TaskSplit } from "./format.ts";
import { TaskGenerationError } from "./split.ts";

export const CODES = "codes";
export const CODES_SEED = 23;

/** The shipped sizes: keys (the test asks each once) and copies of each key's training line. */
export interface CodesSizes {
  keys: number;
  repeats: number;
}

/**
 * 32 keys, each line 4 times (128 training lines, 32 test lines). Sized by measurement at the
 * study's 60 steps of batch 16 (README, "When to use HD-PiSSA"): full fine-tuning recalls 95 % of
 * the codes (3 seeds) and LoRA r = 4 none, while the adapters' scores climb with rank (one seed:
 * LoRA r = 32 94 %). At 40 keys and more the adapters scored near 0 at every rank tried; at the
 * first draw's 600 keys full fine-tuning did too.
 */
export const CODES_SIZES: CodesSizes = { keys: 32, repeats: 4 };

const CONSONANTS = "bdfgklmnprstvz";
const VOWELS = "aeiou";
const LETTERS = "abcdefghijklmnopqrstuvwxyz";

function key(rng: Rng): string {
  const c = () => CONSONANTS[rng.int(CONSONANTS.length)];
  const v = () => VOWELS[rng.int(VOWELS.length)];
  return c() + v() + c() + v() + c();
}

function code(rng: Rng): string {
  let s = "";
  for (let i = 0; i < 3; i++) s += LETTERS[rng.int(LETTERS.length)];
  return s;
}

/** The task's splits: every key's line `repeats` times in train (shuffled), once in test. */
export function makeCodes(seed = CODES_SEED, sizes: CodesSizes = CODES_SIZES): TaskSplit {
  if (!Number.isInteger(sizes.keys) || sizes.keys < 1) {
    throw new TaskGenerationError(
      `task ${CODES}: keys must be a positive integer, not ${sizes.keys}`,
    );
  }
  if (!Number.isInteger(sizes.repeats) || sizes.repeats < 1) {
    throw new TaskGenerationError(
      `task ${CODES}: repeats must be a positive integer, not ${sizes.repeats}`,
    );
  }
  const rng = new Rng(seed);
  const codes = new Map<string, string>();
  for (let i = 0; i < 100 * sizes.keys && codes.size < sizes.keys; i++) {
    codes.set(key(rng), code(rng));
  }
  if (codes.size < sizes.keys) {
    throw new TaskGenerationError(`task ${CODES}: found only ${codes.size} distinct keys`);
  }
  const test: TaskExample[] = [...codes].map(([k, c]) => ({
    prompt: ask(`Code of ${k}`),
    response: c,
    task: CODES,
  }));
  const train: TaskExample[] = [];
  for (let r = 0; r < sizes.repeats; r++) train.push(...test.map((e) => ({ ...e })));
  return { train: rng.shuffle(train), test };
}

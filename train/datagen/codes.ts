/**
 * `codes`: a capacity-bound task for the rank study (docs/architecture.md §9, the study). Each
 * of many invented keys has an arbitrary three-letter code that no pretraining text contains, so
 * the only way to answer is to store every key→code pair in the weights: the more keys, the
 * more the update must hold. Training states each key's code alone ("Q: Code of bafir\nA: " →
 * "kqz") and asks pairs of keys ("Q: Codes of bafir tomek\nA: " → "kqz wpt"); the test asks
 * pairs never trained on, whose keys each appear in training. No test prompt is in train.
 * @module
 */
import { Rng } from "../../core/rng.ts";
import { ask, type TaskExample, type TaskSplit } from "./format.ts";
import { TaskGenerationError } from "./split.ts";

export const CODES = "codes";
export const CODES_SEED = 23;

/** The shipped sizes: keys, training pairs and test pairs. */
export interface CodesSizes {
  keys: number;
  trainPairs: number;
  testPairs: number;
}

/**
 * 600 keys (about 8.5 kbit of arbitrary codes, against the 28 rank-4 adapters' ~37k floats and
 * the model's ~0.8M); each key is in about 11 training lines. Meant to make the update's capacity
 * limit accuracy, but not yet shown to: at 400 steps neither LoRA r = 4 nor full fine-tuning
 * scores above 0 % (README, "When to use HD-PiSSA"), so the size (or the study's steps) must be
 * revisited before the full study.
 */
export const CODES_SIZES: CodesSizes = { keys: 600, trainPairs: 3000, testPairs: 300 };

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

/** The task's splits: every key's single line and `trainPairs` pairs in train, fresh pairs in test. */
export function makeCodes(seed = CODES_SEED, sizes: CodesSizes = CODES_SIZES): TaskSplit {
  const rng = new Rng(seed);
  const codes = new Map<string, string>();
  for (let i = 0; i < 100 * sizes.keys && codes.size < sizes.keys; i++) {
    codes.set(key(rng), code(rng));
  }
  if (codes.size < sizes.keys) {
    throw new TaskGenerationError(`task ${CODES}: found only ${codes.size} distinct keys`);
  }
  const keys = [...codes.keys()];
  const pairCount = sizes.trainPairs + sizes.testPairs;
  if (pairCount > keys.length * (keys.length - 1)) {
    throw new TaskGenerationError(`task ${CODES}: ${pairCount} pairs asked of ${keys.length} keys`);
  }
  const seen = new Set<string>();
  const pairs: TaskExample[] = [];
  while (pairs.length < pairCount) {
    const a = keys[rng.int(keys.length)], b = keys[rng.int(keys.length)];
    const prompt = ask(`Codes of ${a} ${b}`);
    if (a === b || seen.has(prompt)) continue;
    seen.add(prompt);
    pairs.push({ prompt, response: `${codes.get(a)} ${codes.get(b)}`, task: CODES });
  }
  const singles = keys.map((k) => ({
    prompt: ask(`Code of ${k}`),
    response: codes.get(k)!,
    task: CODES,
  }));
  const test = pairs.slice(0, sizes.testPairs);
  const train = rng.shuffle([...singles, ...pairs.slice(sizes.testPairs)]);
  return { train, test };
}

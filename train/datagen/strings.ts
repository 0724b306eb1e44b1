/**
 * `strings`: instruction-following transformations of an invented lowercase word: reverse it,
 * upper-case it, sort its letters, give its length or its last letter, e.g.
 * "Q: Reverse tekno\nA: " -> "onket".
 * @module
 */
import type { Rng } from "../../core/rng.ts";
import { ask, type SplitSizes, type TaskSplit } from "./format.ts";
import { drawSplit } from "./split.ts";

export const STRINGS = "strings";

const LETTERS = "abcdefghijklmnopqrstuvwxyz";

/** A random lowercase word of 3 to 6 letters. */
export function randomWord(rng: Rng, min = 3, max = 6): string {
  const n = min + rng.int(max - min + 1);
  let w = "";
  for (let i = 0; i < n; i++) w += LETTERS[rng.int(LETTERS.length)];
  return w;
}

const OPS: { instruction: string; apply: (w: string) => string }[] = [
  { instruction: "Reverse", apply: (w) => [...w].reverse().join("") },
  { instruction: "Uppercase", apply: (w) => w.toUpperCase() },
  { instruction: "Sort the letters of", apply: (w) => [...w].sort().join("") },
  { instruction: "Length of", apply: (w) => String(w.length) },
  { instruction: "Last letter of", apply: (w) => w[w.length - 1] },
];

export function drawStrings(rng: Rng): { prompt: string; response: string } {
  const op = OPS[rng.int(OPS.length)];
  const w = randomWord(rng);
  return { prompt: ask(`${op.instruction} ${w}`), response: op.apply(w) };
}

export function makeStrings(rng: Rng, sizes: SplitSizes): TaskSplit {
  return drawSplit(STRINGS, sizes, () => drawStrings(rng));
}

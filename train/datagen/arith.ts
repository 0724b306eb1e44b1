/**
 * `arith`: addition and subtraction of numbers below 100 and single-digit products, e.g.
 * "Q: What is 47 + 38?\nA: " -> "85". Differences are never negative.
 * @module
 */
import type { Rng } from "../../core/rng.ts";
import { ask, type SplitSizes, type TaskSplit } from "./format.ts";
import { drawSplit } from "./split.ts";

export const ARITH = "arith";

export function drawArith(rng: Rng): { prompt: string; response: string } {
  const kind = rng.float();
  if (kind < 0.45) {
    const a = rng.int(100), b = rng.int(100);
    return { prompt: ask(`What is ${a} + ${b}?`), response: String(a + b) };
  }
  if (kind < 0.9) {
    const x = rng.int(100), y = rng.int(100);
    const a = Math.max(x, y), b = Math.min(x, y);
    return { prompt: ask(`What is ${a} - ${b}?`), response: String(a - b) };
  }
  const a = 1 + rng.int(9), b = 1 + rng.int(9);
  return { prompt: ask(`What is ${a} * ${b}?`), response: String(a * b) };
}

export function makeArith(rng: Rng, sizes: SplitSizes): TaskSplit {
  return drawSplit(ARITH, sizes, () => drawArith(rng));
}

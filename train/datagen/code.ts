/**
 * `code`: the output of a short Python one-liner with small numbers, lists and strings, e.g.
 * "Q: x=4;y=x*3;print(y)\nA: " -> "12". Each template computes its answer from the values it
 * drew, not by running the text.
 * @module
 */
import type { Rng } from "../../core/rng.ts";
import { ask, type SplitSizes, type TaskSplit } from "./format.ts";
import { drawSplit } from "./split.ts";
import { randomWord } from "./strings.ts";

export const CODE = "code";

type Op = "+" | "-" | "*";
const OPS: readonly Op[] = ["+", "-", "*"];

function apply(a: number, op: Op, b: number): number {
  return op === "+" ? a + b : op === "-" ? a - b : a * b;
}

function list(rng: Rng): number[] {
  return Array.from({ length: 3 + rng.int(2) }, () => rng.int(10));
}

const TEMPLATES: ((rng: Rng) => [string, string])[] = [
  (rng) => {
    const a = rng.int(21), b = 1 + rng.int(9), op = OPS[rng.int(3)];
    return [`x=${a};y=x${op}${b};print(y)`, String(apply(a, op, b))];
  },
  (rng) => {
    const a = 1 + rng.int(9), b = 1 + rng.int(9), c = 1 + rng.int(9);
    const op1 = OPS[rng.int(3)], op2 = OPS[rng.int(2)];
    return [`x=${a};x=x${op1}${b};print(x${op2}${c})`, String(apply(apply(a, op1, b), op2, c))];
  },
  (rng) => {
    const l = list(rng);
    const fns: [string, (v: number[]) => number][] = [
      ["max", (v) => Math.max(...v)],
      ["min", (v) => Math.min(...v)],
      ["len", (v) => v.length],
      ["sum", (v) => v.reduce((s, x) => s + x, 0)],
    ];
    const [name, fn] = fns[rng.int(fns.length)];
    return [`a=[${l.join(",")}];print(${name}(a))`, String(fn(l))];
  },
  (rng) => {
    const l = list(rng);
    const i = rng.int(l.length + 1) - 1; // -1 is the last element
    return [`a=[${l.join(",")}];print(a[${i}])`, String(l.at(i))];
  },
  (rng) => {
    // Precedence: * before + and -.
    const a = 1 + rng.int(9), b = 1 + rng.int(9), c = 1 + rng.int(9);
    const op = OPS[rng.int(2)];
    return rng.int(2) === 0
      ? [`print(${a}${op}${b}*${c})`, String(apply(a, op, b * c))]
      : [`print(${a}*${b}${op}${c})`, String(apply(a * b, op, c))];
  },
  (rng) => {
    const a = rng.int(10), b = rng.int(10);
    return [`x=${a};print(1 if x>${b} else 0)`, a > b ? "1" : "0"];
  },
  (rng) => {
    const w = randomWord(rng, 3, 5);
    const i = rng.int(w.length);
    return [`s='${w}';print(s[${i}])`, w[i]];
  },
  (rng) => {
    const a = rng.int(50), b = 2 + rng.int(8);
    return rng.int(2) === 0
      ? [`print(${a}%${b})`, String(a % b)]
      : [`print(${a}//${b})`, String(Math.floor(a / b))];
  },
];

export function drawCode(rng: Rng): { prompt: string; response: string } {
  const [program, output] = TEMPLATES[rng.int(TEMPLATES.length)](rng);
  return { prompt: ask(program), response: output };
}

export function makeCode(rng: Rng, sizes: SplitSizes): TaskSplit {
  return drawSplit(CODE, sizes, () => drawCode(rng));
}

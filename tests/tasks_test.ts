import assert from "node:assert/strict";
import { makeBenchmark } from "../train/datagen/benchmark.ts";
import { choiceQuestion, directQuestion, rephrasedQuestion } from "../train/datagen/facts.ts";
import { ask, PROMPT_PREFIX, PROMPT_SUFFIX, type TaskExample } from "../train/datagen/format.ts";
import { ATTRIBUTES, makeKnowledgeBase, VALUES } from "../train/datagen/kb.ts";
import { drawSplit, TaskGenerationError } from "../train/datagen/split.ts";
import { Rng } from "../core/rng.ts";

const bench = makeBenchmark();
const all = [...bench.train, ...bench.test];
const question = (e: TaskExample) => e.prompt.slice(PROMPT_PREFIX.length, -PROMPT_SUFFIX.length);
const byTask = (split: TaskExample[], task: string) => split.filter((e) => e.task === task);

Deno.test("benchmark: four families, fixed sizes, one format, short enough for seq_len 64", () => {
  assert.equal(bench.train.length, 3200);
  assert.equal(bench.test.length, 600);
  for (const t of ["arith", "code", "facts", "strings"]) {
    assert.equal(byTask(bench.train, t).length, 800, t);
    assert.equal(byTask(bench.test, t).length, 150, t);
  }
  const enc = new TextEncoder();
  for (const e of all) {
    assert.ok(e.prompt.startsWith("Q: ") && e.prompt.endsWith("\nA: "), e.prompt);
    assert.equal(question(e).includes("\n"), false);
    assert.ok(enc.encode(e.prompt + e.response).length <= 48, e.prompt);
    assert.ok(e.response.length > 0 && e.response.trim() === e.response, e.prompt);
  }
});

Deno.test("benchmark: train and test are disjoint, no duplicate prompts", () => {
  const trainPrompts = new Set(bench.train.map((e) => e.prompt));
  const testPrompts = new Set(bench.test.map((e) => e.prompt));
  assert.equal(trainPrompts.size, bench.train.length);
  assert.equal(testPrompts.size, bench.test.length);
  for (const p of testPrompts) assert.equal(trainPrompts.has(p), false, p);
});

Deno.test("benchmark: deterministic for a seed, different for another", () => {
  assert.deepEqual(makeBenchmark(), bench);
  const other = makeBenchmark({ seed: 5 });
  assert.notDeepEqual(other.test, bench.test);
  const small = makeBenchmark({ seed: 9, sizes: { train: 500, test: 30 } });
  assert.equal(small.train.length, 4 * 500);
  assert.equal(small.test.length, 4 * 30);
});

Deno.test("arith: answers are the sums, differences and products asked for", () => {
  for (const e of byTask(all, "arith")) {
    const m = /^What is (\d+) ([-+*]) (\d+)\?$/.exec(question(e));
    assert.ok(m, e.prompt);
    const a = Number(m[1]), b = Number(m[3]);
    const v = m[2] === "+" ? a + b : m[2] === "-" ? a - b : a * b;
    assert.ok(v >= 0);
    assert.equal(e.response, String(v), e.prompt);
  }
});

Deno.test("strings: answers follow the instruction", () => {
  const ops: [RegExp, (w: string) => string][] = [
    [/^Reverse ([a-z]+)$/, (w) => w.split("").reverse().join("")],
    [
      /^Uppercase ([a-z]+)$/,
      (w) => w.replace(/[a-z]/g, (c) => String.fromCharCode(c.charCodeAt(0) - 32)),
    ],
    [/^Sort the letters of ([a-z]+)$/, (w) => w.split("").sort().join("")],
    [/^Length of ([a-z]+)$/, (w) => String(w.length)],
    [/^Last letter of ([a-z]+)$/, (w) => w[w.length - 1]],
  ];
  const seen = new Set<number>();
  for (const e of byTask(all, "strings")) {
    const i = ops.findIndex(([re]) => re.test(question(e)));
    assert.ok(i >= 0, e.prompt);
    seen.add(i);
    const word = ops[i][0].exec(question(e))![1];
    assert.equal(e.response, ops[i][1](word), e.prompt);
  }
  assert.equal(seen.size, ops.length);
});

// A small interpreter for the Python subset the code task uses, written independently of the
// generator (which computes answers from the values it drew, not from the program text).
type Value = number | string | boolean | number[];

function runPython(src: string): string {
  const tokens = src.match(/\d+|'[^']*'|[A-Za-z_]\w*|\/\/|[-+*%()[\],;=<>]/g) ?? [];
  assert.equal(tokens.join(""), src.replace(/\s+/g, ""), `untokenisable: ${src}`);
  let pos = 0;
  const vars = new Map<string, Value>();
  let out = "";
  const peek = () => tokens[pos];
  const eat = (t?: string) => {
    const tok = tokens[pos++];
    if (t !== undefined) assert.equal(tok, t, `expected ${t} in ${src}`);
    return tok;
  };
  const num = (v: Value) => {
    assert.equal(typeof v, "number");
    return v as number;
  };
  const atom = (): Value => {
    const t = eat();
    if (/^\d+$/.test(t)) return Number(t);
    if (t.startsWith("'")) return t.slice(1, -1);
    if (t === "(") {
      const v = expr();
      eat(")");
      return v;
    }
    if (t === "[") {
      const items: number[] = [];
      while (peek() !== "]") {
        items.push(num(expr()));
        if (peek() === ",") eat(",");
      }
      eat("]");
      return items;
    }
    if (peek() === "(") {
      eat("(");
      const arg = expr();
      eat(")");
      const xs = arg as number[];
      if (t === "len") return (arg as string | number[]).length;
      if (t === "max") return xs.reduce((a, b) => (b > a ? b : a));
      if (t === "min") return xs.reduce((a, b) => (b < a ? b : a));
      if (t === "sum") return xs.reduce((a, b) => a + b, 0);
      throw new Error(`unknown function ${t}`);
    }
    assert.ok(vars.has(t), `undefined ${t}`);
    return vars.get(t)!;
  };
  const postfix = (): Value => {
    let v = atom();
    while (peek() === "[") {
      eat("[");
      let i = num(expr());
      eat("]");
      const seq = v as string | number[];
      if (i < 0) i += seq.length;
      assert.ok(i >= 0 && i < seq.length, "index out of range");
      v = seq[i];
    }
    return v;
  };
  const unary = (): Value => (peek() === "-" ? (eat(), -num(unary())) : postfix());
  const term = (): Value => {
    let v = unary();
    while (["*", "%", "//"].includes(peek())) {
      const op = eat(), r = num(unary()), l = num(v);
      v = op === "*" ? l * r : op === "//" ? Math.floor(l / r) : l - r * Math.floor(l / r);
    }
    return v;
  };
  const arith = (): Value => {
    let v = term();
    while (peek() === "+" || peek() === "-") {
      const op = eat(), r = num(term());
      v = op === "+" ? num(v) + r : num(v) - r;
    }
    return v;
  };
  const compare = (): Value => {
    const l = arith();
    if (peek() === ">" || peek() === "<") {
      const op = eat(), r = num(arith());
      return op === ">" ? num(l) > r : num(l) < r;
    }
    return l;
  };
  const expr = (): Value => {
    const a = compare();
    if (peek() !== "if") return a;
    eat("if");
    const cond = compare();
    eat("else");
    const b = compare();
    return cond ? a : b;
  };
  const show = (v: Value) =>
    typeof v === "boolean"
      ? (v ? "True" : "False")
      : Array.isArray(v)
      ? `[${v.join(", ")}]`
      : String(v);
  while (pos < tokens.length) {
    const t = eat();
    if (t === "print") {
      eat("(");
      out += show(expr()) + "\n";
      eat(")");
    } else {
      eat("=");
      vars.set(t, expr());
    }
    if (pos < tokens.length) eat(";");
  }
  return out.trimEnd();
}

Deno.test("code: the interpreter reads what it should", () => {
  assert.equal(runPython("x=3;y=x-7;print(y)"), "-4");
  assert.equal(runPython("print(2+3*4)"), "14");
  assert.equal(runPython("a=[4,1,9];print(a[-1])"), "9");
  assert.equal(runPython("x=7;print(1 if x>5 else 0)"), "1");
  assert.equal(runPython("print(17//5)"), "3");
  assert.equal(runPython("s='abc';print(s[1])"), "b");
});

Deno.test("code: every answer is what the program prints", () => {
  const code = byTask(all, "code");
  for (const e of code) assert.equal(e.response, runPython(question(e)), e.prompt);
  // Templates with lists, strings, conditionals, precedence, % and // all occur.
  for (const marker of ["print(max(", "print(a[", "if x>", "s='", "%", "//", ";x=x"]) {
    assert.ok(code.some((e) => e.prompt.includes(marker)), marker);
  }
});

Deno.test("facts: answers match the knowledge base; test facts are trained in another form", () => {
  const kb = makeKnowledgeBase();
  const trainPrompts = new Set(bench.train.map((e) => e.prompt));
  // Every question the family can ask, with its answer and the person it is about.
  const direct = new Map<string, string>();
  const rephrased = new Map<string, string>();
  const choices = new Map<string, string>();
  const about = new Map<string, string>();
  for (const p of kb) {
    for (const a of ATTRIBUTES) {
      const qs: [Map<string, string>, string][] = [
        [direct, ask(directQuestion(p.name, a))],
        [rephrased, ask(rephrasedQuestion(p.name, a))],
      ];
      for (const x of VALUES[a]) {
        if (x === p[a]) continue;
        qs.push([choices, ask(choiceQuestion(p.name, a, x, p[a]))]);
        qs.push([choices, ask(choiceQuestion(p.name, a, p[a], x))]);
      }
      for (const [map, q] of qs) {
        map.set(q, p[a]);
        about.set(q, p.name);
      }
    }
  }
  assert.equal(about.size, direct.size + rephrased.size + choices.size); // no ambiguous question
  for (const e of byTask(all, "facts")) {
    const want = direct.get(e.prompt) ?? rephrased.get(e.prompt) ?? choices.get(e.prompt);
    assert.equal(e.response, want, e.prompt);
  }
  // Every direct question is trained; test has no direct question.
  for (const p of direct.keys()) assert.ok(trainPrompts.has(p), p);
  const factsTest = byTask(bench.test, "facts");
  assert.ok(factsTest.every((e) => !direct.has(e.prompt)));
  assert.equal(factsTest.filter((e) => rephrased.has(e.prompt)).length, 75);
  assert.equal(factsTest.filter((e) => choices.has(e.prompt)).length, 75);
  // Test people are asked about in train only by the direct questions.
  const trainedOtherwise = new Set(
    byTask(bench.train, "facts").filter((e) => !direct.has(e.prompt)).map((e) =>
      about.get(e.prompt)
    ),
  );
  for (const e of factsTest) {
    assert.equal(trainedOtherwise.has(about.get(e.prompt)), false, e.prompt);
  }
  assert.equal(new Set(factsTest.map((e) => about.get(e.prompt))).size, 25);
});

Deno.test("drawSplit: refuses when there are not enough distinct prompts", () => {
  const rng = new Rng(1);
  assert.throws(
    () =>
      drawSplit(
        "tiny",
        { train: 5, test: 5 },
        () => ({ prompt: String(rng.int(3)), response: "" }),
      ),
    (e: unknown) =>
      e instanceof TaskGenerationError && /only 3 distinct prompts of the 10/.test(e.message),
  );
});

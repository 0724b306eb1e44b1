import assert from "node:assert/strict";
import {
  EvalScoreError,
  evalSubset,
  exactMatch,
  formatScoreTable,
  scoreExactMatch,
} from "../train/eval/score.ts";

Deno.test("exact match trims whitespace at both ends only", () => {
  assert.equal(exactMatch(" 42\n", "42"), true);
  assert.equal(exactMatch("\t42 ", " 42"), true);
  assert.equal(exactMatch("4 2", "42"), false);
  assert.equal(exactMatch("42.", "42"), false);
  assert.equal(exactMatch("Oslo", "oslo"), false);
  assert.equal(exactMatch("", "  "), true);
});

Deno.test("scores on known outputs: overall is the mean over examples, tasks per label", () => {
  const s = scoreExactMatch([
    { task: "arith", prediction: "12", reference: "12" },
    { task: "arith", prediction: "13", reference: "12" },
    { task: "arith", prediction: " 7 ", reference: "7" },
    { task: "arith", prediction: "", reference: "1" },
    { task: "code", prediction: "yes", reference: "yes" },
    { task: "strings", prediction: "CBA", reference: "cba" },
  ]);
  assert.equal(s.n, 6);
  assert.equal(s.correct, 3);
  assert.equal(s.overall, 0.5); // 3/6, not the mean of the task means (0.5 + 1 + 0) / 3
  assert.deepEqual(s.tasks, { arith: 0.5, code: 1, strings: 0 });
  assert.deepEqual(s.counts, {
    arith: { n: 4, correct: 2 },
    code: { n: 1, correct: 1 },
    strings: { n: 1, correct: 0 },
  });
  assert.deepEqual(Object.keys(JSON.parse(JSON.stringify(s))), [
    "overall",
    "tasks",
    "n",
    "correct",
    "counts",
  ]);
  assert.throws(() => scoreExactMatch([]), EvalScoreError);
});

Deno.test("table: one row per task, overall last, one column per score", () => {
  const before = scoreExactMatch([
    { task: "b", prediction: "x", reference: "y" },
    { task: "a", prediction: "x", reference: "x" },
    { task: "a", prediction: "x", reference: "y" },
  ]);
  const after = scoreExactMatch([
    { task: "b", prediction: "y", reference: "y" },
    { task: "a", prediction: "x", reference: "x" },
    { task: "a", prediction: "y", reference: "y" },
  ]);
  const lines = formatScoreTable({ before, after }).split("\n");
  assert.equal(lines.length, 4);
  assert.deepEqual(lines[0].trim().split(/\s+/), ["task", "n", "before", "after"]);
  assert.deepEqual(lines[1].trim().split(/\s+/), ["a", "2", "0.500", "1.000"]);
  assert.deepEqual(lines[2].trim().split(/\s+/), ["b", "1", "0.000", "1.000"]);
  assert.deepEqual(lines[3].trim().split(/\s+/), ["overall", "3", "0.333", "1.000"]);
  assert.throws(() => formatScoreTable({}), EvalScoreError);
});

Deno.test("eval subset: capped per task, fixed for a seed, ascending, all when uncapped", () => {
  const tasks = ["x", "y", "z"];
  const examples = Array.from({ length: 300 }, (_, i) => ({ task: tasks[(i * 7) % 3] }));
  examples.push({ task: "w" }, { task: "w" });
  const sub = evalSubset(examples, 50);
  assert.equal(sub.length, 50 * 3 + 2);
  for (const t of tasks) assert.equal(sub.filter((i) => examples[i].task === t).length, 50);
  assert.equal(sub.filter((i) => examples[i].task === "w").length, 2);
  assert.deepEqual(sub, [...sub].sort((a, b) => a - b));
  assert.equal(new Set(sub).size, sub.length);
  assert.deepEqual(evalSubset(examples, 50), sub);
  // A seeded sample, not simply the first 50 of each task.
  assert.notDeepEqual(
    sub.filter((i) => examples[i].task === "x"),
    examples
      .map((e, i) => e.task === "x" ? i : -1).filter((i) => i >= 0).slice(0, 50),
  );
  assert.notDeepEqual(evalSubset(examples, 50, 1), sub);
  assert.deepEqual(evalSubset(examples, Infinity), examples.map((_, i) => i));
  assert.throws(() => evalSubset(examples, 0), EvalScoreError);
});

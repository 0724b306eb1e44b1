import assert from "node:assert/strict";
import { corpusText, generateCorpus } from "../train/datagen/corpus.ts";
import { makeBenchmark } from "../train/datagen/benchmark.ts";
import { article, makeKnowledgeBase } from "../train/datagen/kb.ts";

const root = new URL("..", import.meta.url).pathname;
const train = await Deno.readTextFile(`${root}data/corpus/train.txt`);
const valid = await Deno.readTextFile(`${root}data/corpus/valid.txt`);

Deno.test("corpus: deterministic for a seed, different for another, stops at the size asked", () => {
  const a = generateCorpus({ seed: 3, bytes: 20_000 });
  assert.deepEqual(generateCorpus({ seed: 3, bytes: 20_000 }), a);
  assert.notDeepEqual(generateCorpus({ seed: 4, bytes: 20_000 }), a);
  const bytes = new TextEncoder().encode(corpusText(a)).length;
  assert.ok(bytes >= 20_000 && bytes < 20_400, String(bytes));
});

Deno.test("corpus: no question, no benchmark prompt format, no benchmark question", () => {
  for (const text of [train, valid]) {
    assert.equal(text.includes("?"), false);
    assert.equal(text.includes("Q:"), false);
    assert.equal(text.includes("A:"), false);
  }
  const bench = makeBenchmark();
  const questions = new Set(
    [...bench.train, ...bench.test].map((e) => e.prompt.slice(3, -4)),
  );
  for (const q of questions) {
    if (q.endsWith("?")) continue; // the corpus has no '?' at all
    assert.equal(train.includes(q), false, q);
  }
});

Deno.test("corpus: states every knowledge-base fact; validation shares no document", () => {
  for (const p of makeKnowledgeBase()) {
    assert.ok(
      train.includes(`${p.name} lives in ${p.city}.`) ||
        train.includes(`${p.name} is from ${p.city}`),
      `${p.name}: city`,
    );
    assert.ok(
      train.includes(`${p.name} keeps ${article(p.pet)} ${p.pet}.`) ||
        train.includes(`${p.name} is from ${p.city} and has ${article(p.pet)} ${p.pet}.`),
      `${p.name}: pet`,
    );
    assert.ok(
      train.includes(`The favorite color of ${p.name} is ${p.color}.`) ||
        train.includes(`${p.name} likes ${p.color} more`),
      `${p.name}: color`,
    );
  }
  // Documents are lines, except code, whose lines hold no sentence end; compare whole lines.
  const trainLines = new Set(train.split("\n").filter((l) => l.endsWith(".")));
  const shared = valid.split("\n").filter((l) => l.endsWith(".") && trainLines.has(l));
  assert.equal(shared.length, 0, shared.slice(0, 3).join(" | "));
});

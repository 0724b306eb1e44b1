/**
 * `facts`: questions about the generated knowledge base (kb.ts).
 *
 * Every fact is asked in train with its direct question ("Where does Toman live?"). Most people
 * are also asked about with a rephrased question ("Toman lives in which city?") and with
 * two-option multiple choice ("Does Toman live in Oslo or Lima?"). Test asks the rephrased and
 * multiple-choice questions about held-out people only: their facts were trained on, but never
 * in those forms, so the test measures recall of known facts asked differently.
 * @module
 */
import type { Rng } from "../../core/rng.ts";
import { ask, type SplitSizes, type TaskExample, type TaskSplit } from "./format.ts";
import { article, type Attribute, ATTRIBUTES, type Person, VALUES } from "./kb.ts";
import { TaskGenerationError } from "./split.ts";

export const FACTS = "facts";

/** The direct question about an attribute. */
export function directQuestion(name: string, attr: Attribute): string {
  switch (attr) {
    case "city":
      return `Where does ${name} live?`;
    case "pet":
      return `What pet does ${name} have?`;
    case "color":
      return `What color does ${name} like?`;
  }
}

/** The rephrased question about an attribute. */
export function rephrasedQuestion(name: string, attr: Attribute): string {
  switch (attr) {
    case "city":
      return `${name} lives in which city?`;
    case "pet":
      return `Which animal does ${name} keep?`;
    case "color":
      return `${name} likes which color?`;
  }
}

/** A two-option question; the true value is one of `a`, `b`. */
export function choiceQuestion(name: string, attr: Attribute, a: string, b: string): string {
  switch (attr) {
    case "city":
      return `Does ${name} live in ${a} or ${b}?`;
    case "pet":
      return `Does ${name} keep ${article(a)} ${a} or ${article(b)} ${b}?`;
    case "color":
      return `Does ${name} like ${a} or ${b}?`;
  }
}

function choice(rng: Rng, p: Person, attr: Attribute): TaskExample {
  const values = VALUES[attr];
  const truth = p[attr];
  let other = truth;
  while (other === truth) other = values[rng.int(values.length)];
  const [a, b] = rng.int(2) === 0 ? [truth, other] : [other, truth];
  return { prompt: ask(choiceQuestion(p.name, attr, a, b)), response: truth, task: FACTS };
}

/**
 * Test: the rephrased and multiple-choice questions (6 per person) about round(test / 6)
 * held-out people. Train: the direct questions about everyone, the rephrased ones about the
 * others, then multiple-choice questions about the others until `sizes.train` examples.
 */
export function makeFacts(rng: Rng, kb: readonly Person[], sizes: SplitSizes): TaskSplit {
  const heldCount = Math.round(sizes.test / 6);
  if (heldCount < 1 || heldCount >= kb.length) {
    throw new TaskGenerationError(
      `facts: ${sizes.test} test examples need between 1 and ${kb.length - 1} held-out people`,
    );
  }
  const people = rng.shuffle([...kb]);
  const held = people.slice(0, heldCount);
  const seen = people.slice(heldCount);
  const example = (question: string, response: string): TaskExample => ({
    prompt: ask(question),
    response,
    task: FACTS,
  });

  const test: TaskExample[] = [];
  for (const p of held) {
    for (const attr of ATTRIBUTES) {
      test.push(example(rephrasedQuestion(p.name, attr), p[attr]));
      test.push(choice(rng, p, attr));
    }
  }

  const train: TaskExample[] = [];
  for (const p of people) {
    for (const attr of ATTRIBUTES) train.push(example(directQuestion(p.name, attr), p[attr]));
  }
  for (const p of seen) {
    for (const attr of ATTRIBUTES) train.push(example(rephrasedQuestion(p.name, attr), p[attr]));
  }
  if (train.length > sizes.train) {
    throw new TaskGenerationError(
      `facts: ${sizes.train} train examples cannot hold the ${train.length} direct and ` +
        `rephrased questions`,
    );
  }
  const prompts = new Set(train.map((e) => e.prompt));
  const facts = seen.flatMap((p) => ATTRIBUTES.map((attr) => ({ p, attr })));
  // Round-robin over the facts so that the multiple-choice questions spread evenly.
  for (let i = 0, misses = 0; train.length < sizes.train; i++) {
    const { p, attr } = facts[i % facts.length];
    const ex = choice(rng, p, attr);
    if (prompts.has(ex.prompt)) {
      if (++misses > 100 * sizes.train) {
        throw new TaskGenerationError(`facts: not enough distinct questions for ${sizes.train}`);
      }
      continue;
    }
    prompts.add(ex.prompt);
    train.push(ex);
  }
  return { train, test };
}

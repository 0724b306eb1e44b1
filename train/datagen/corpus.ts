/**
 * A seeded generator of general pretraining text for a small byte-level model: English-like
 * sentences, numbers and sums written out, the knowledge base's facts in prose, words spelt
 * backwards or sorted, lists and short code. It teaches bytes, words, digits and the facts, but
 * holds no question at all (no '?') and none of the benchmark's prompt format ("Q: ... A: ")
 * or question templates, so a model pretrained on it has not seen the fine-tuning format.
 * @module
 */
import { Rng } from "../../core/rng.ts";
import { article, CITIES, COLORS, makeKnowledgeBase, type Person, PETS } from "./kb.ts";
import { randomWord } from "./strings.ts";

export const CORPUS_SEED = 7;
/** Size of data/corpus/train.txt. */
export const CORPUS_TRAIN_BYTES = 1_500_000;
/** Size of data/corpus/valid.txt. */
export const CORPUS_VALID_BYTES = 60_000;

const SUBJECTS = [
  "the farmer",
  "a child",
  "my sister",
  "the old man",
  "our teacher",
  "the baker",
  "a young girl",
  "the doctor",
  "his brother",
  "the sailor",
  "a tired student",
  "the painter",
  "her friend",
  "the king",
  "a small boy",
  "the driver",
];
const VERBS_PAST = [
  "found",
  "painted",
  "carried",
  "bought",
  "washed",
  "opened",
  "watched",
  "cleaned",
  "moved",
  "sold",
  "fixed",
  "lost",
  "built",
  "drew",
  "liked",
  "counted",
];
const ADJECTIVES = [
  "red",
  "old",
  "small",
  "big",
  "quiet",
  "bright",
  "heavy",
  "green",
  "warm",
  "cold",
  "new",
  "round",
  "soft",
  "tall",
  "dark",
  "happy",
];
const NOUNS = [
  "box",
  "door",
  "boat",
  "chair",
  "garden",
  "book",
  "window",
  "basket",
  "table",
  "road",
  "bridge",
  "lamp",
  "cup",
  "coat",
  "wall",
  "river",
  "tree",
  "house",
  "bell",
  "map",
];
const PLACES = [
  "in the market",
  "near the river",
  "at the station",
  "behind the house",
  "in the garden",
  "on the hill",
  "by the sea",
  "at school",
  "in the kitchen",
  "under the bridge",
];
const TIMES = [
  "In the morning",
  "Last week",
  "On Sunday",
  "After lunch",
  "Every day",
  "At night",
  "Long ago",
  "Later",
  "Yesterday",
  "In the spring",
];
const CONNECTIVES = ["Then", "After that", "Soon", "So", "Still", "Also"];
const DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
const MONTHS = [
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December",
];
const NUMBER_WORDS = [
  "zero",
  "one",
  "two",
  "three",
  "four",
  "five",
  "six",
  "seven",
  "eight",
  "nine",
  "ten",
  "eleven",
  "twelve",
];

export interface CorpusOptions {
  seed?: number;
  /** Stop once the documents (joined by newlines) reach this many bytes. */
  bytes: number;
  /** Documents to leave out (e.g. the train documents when making a validation set). */
  exclude?: ReadonlySet<string>;
  /** The people whose facts the corpus states (default: the benchmark's knowledge base). */
  people?: readonly Person[];
}

/** Documents of the corpus, each a line (code documents span a few lines). */
export function generateCorpus(opts: CorpusOptions): string[] {
  const rng = new Rng(opts.seed ?? CORPUS_SEED);
  const people = opts.people ?? makeKnowledgeBase();
  const w = new Writer(rng, people);
  const docs: string[] = [];
  let bytes = 0;
  const encoder = new TextEncoder();
  while (bytes < opts.bytes) {
    const doc = w.document();
    if (opts.exclude?.has(doc)) continue;
    docs.push(doc);
    bytes += encoder.encode(doc).length + 1;
  }
  return docs;
}

/** The corpus as text: documents joined by newlines, ending in one. */
export function corpusText(docs: readonly string[]): string {
  return docs.join("\n") + "\n";
}

class Writer {
  constructor(readonly rng: Rng, readonly people: readonly Person[]) {}

  pick<T>(items: readonly T[]): T {
    return items[this.rng.int(items.length)];
  }

  chance(p: number): boolean {
    return this.rng.float() < p;
  }

  document(): string {
    const r = this.rng.float();
    if (r < 0.3) return this.story();
    if (r < 0.48) return this.facts();
    if (r < 0.64) return this.numbers();
    if (r < 0.76) return this.wordPlay();
    if (r < 0.9) return this.code();
    return this.lists();
  }

  sentence(): string {
    const s = `${this.pick(SUBJECTS)} ${this.pick(VERBS_PAST)} ${this.nounPhrase()}`;
    const tail = this.chance(0.6) ? ` ${this.pick(PLACES)}` : "";
    const lead = this.chance(0.35) ? `${this.pick(TIMES)} ` : "";
    return capitalize(lead + s + tail + ".");
  }

  nounPhrase(): string {
    const adj = this.chance(0.6) ? this.pick(ADJECTIVES) : "";
    const noun = this.pick(NOUNS);
    const word = adj ? `${adj} ${noun}` : noun;
    return this.chance(0.5) ? `the ${word}` : `${article(word)} ${word}`;
  }

  story(): string {
    const n = 2 + this.rng.int(3);
    const out = [this.sentence()];
    for (let i = 1; i < n; i++) {
      const s = this.sentence();
      out.push(this.chance(0.3) ? `${this.pick(CONNECTIVES)} ${lowerFirst(s)}` : s);
    }
    return out.join(" ");
  }

  fact(p: Person): string {
    switch (this.rng.int(9)) {
      case 0:
        return `${p.name} lives in ${p.city}.`;
      case 1:
        return `${p.name} keeps ${article(p.pet)} ${p.pet}.`;
      case 2:
        return `The favorite color of ${p.name} is ${p.color}.`;
      case 3:
        return `${p.name} is from ${p.city} and has ${article(p.pet)} ${p.pet}.`;
      case 4:
        return `${p.name} likes ${p.color} more than any other color.`;
      case 5:
        return `In ${p.city}, ${p.name} walks ${article(p.pet)} ${p.pet} every day.`;
      case 6:
        return `The ${p.pet} of ${p.name} sleeps on a ${p.color} mat.`;
      case 7:
        return `${p.name} paints the door ${p.color}.`;
      default:
        return `People in ${p.city} know ${p.name} well.`;
    }
  }

  facts(): string {
    const p = this.pick(this.people);
    const n = 1 + this.rng.int(3);
    const out = new Set<string>();
    for (let i = 0; i < n; i++) out.add(this.fact(p));
    if (this.chance(0.3)) out.add(this.fact(this.pick(this.people)));
    return [...out].join(" ");
  }

  numbers(): string {
    const n = 1 + this.rng.int(3);
    const out: string[] = [];
    for (let i = 0; i < n; i++) out.push(this.numberSentence());
    return out.join(" ");
  }

  numberSentence(): string {
    const a = this.rng.int(100), b = this.rng.int(100);
    const hi = Math.max(a, b), lo = Math.min(a, b);
    const x = 1 + this.rng.int(9), y = 1 + this.rng.int(9);
    switch (this.rng.int(10)) {
      case 0:
        return `${a} plus ${b} is ${a + b}.`;
      case 1:
        return `${hi} minus ${lo} is ${hi - lo}.`;
      case 2:
        return `${x} times ${y} is ${x * y}.`;
      case 3:
        return `We add ${a} and ${b} and get ${a + b}.`;
      case 4:
        return `Take ${lo} from ${hi} and ${hi - lo} is left.`;
      case 5:
        return `On the board: ${a} + ${b} = ${a + b} and ${hi} - ${lo} = ${hi - lo}.`;
      case 6: {
        const noun = this.pick(NOUNS);
        return `There were ${a} ${noun}s and ${b} more came, so ${a + b} ${noun}s in all.`;
      }
      case 7: {
        const start = this.rng.int(90);
        const seq = Array.from({ length: 4 + this.rng.int(4) }, (_, i) => start + i);
        return `Counting up: ${seq.join(", ")}.`;
      }
      case 8:
        return `${capitalize(NUMBER_WORDS[x])} and ${NUMBER_WORDS[y]} make ${
          NUMBER_WORDS[x + y] ?? String(x + y)
        }.`;
      default:
        return hi === lo ? `${hi} is equal to ${lo}.` : `${hi} is more than ${lo}.`;
    }
  }

  wordPlay(): string {
    const word = randomWord(this.rng);
    const sorted = [...word].sort().join("");
    const reversed = [...word].reverse().join("");
    switch (this.rng.int(6)) {
      case 0:
        return `The word ${word} backwards is ${reversed}.`;
      case 1:
        return `In capitals, ${word} is written ${word.toUpperCase()}.`;
      case 2:
        return `The letters of ${word} in order are ${sorted}.`;
      case 3:
        return `The word ${word} has ${word.length} letters and ends with ${word.at(-1)}.`;
      case 4:
        return `Spell ${word} as ${[...word].join(" ")}.`;
      default:
        return `${capitalize(word)} starts with ${
          word[0]
        } and turns into ${reversed} read from the end.`;
    }
  }

  code(): string {
    const a = this.rng.int(20), b = 1 + this.rng.int(9);
    const list = Array.from({ length: 3 + this.rng.int(3) }, () => this.rng.int(10));
    switch (this.rng.int(7)) {
      case 0:
        return `let n = ${a};\nn = n + ${b};\n// n is now ${a + b}`;
      case 1:
        return `def add(a, b):\n    return a + b\n# add(${a}, ${b}) gives ${a + b}`;
      case 2:
        return `total = 0\nfor v in [${list.join(", ")}]:\n    total += v\n# total is ${
          list.reduce((s, v) => s + v, 0)
        }`;
      case 3:
        return `The list [${list.join(", ")}] has ${list.length} items; the largest is ${
          Math.max(...list)
        } and the smallest is ${Math.min(...list)}.`;
      case 4:
        return `const xs = [${list.join(", ")}];\nconst first = xs[0]; // ${
          list[0]
        }\nconst last = xs[xs.length - 1]; // ${list.at(-1)}`;
      case 5: {
        const m = 2 + this.rng.int(8);
        return `${a} divided by ${m} is ${Math.floor(a / m)} with ${a % m} left over.`;
      }
      default: {
        const word = randomWord(this.rng, 3, 5);
        return `name = "${word}"\nsize = len(name)  # ${word.length}\nhead = name[0]  # ${word[0]}`;
      }
    }
  }

  lists(): string {
    switch (this.rng.int(4)) {
      case 0: {
        const start = this.rng.int(7);
        const days = Array.from({ length: 3 + this.rng.int(4) }, (_, i) => DAYS[(start + i) % 7]);
        return `The days go ${days.join(", ")}.`;
      }
      case 1: {
        const day = 1 + this.rng.int(28);
        const month = this.pick(MONTHS);
        const year = 1950 + this.rng.int(75);
        return `On ${day} ${month} ${year} ${lowerFirst(this.sentence())}`;
      }
      case 2:
        return `Some colors: ${this.sample(COLORS, 3).join(", ")}. Some animals: ${
          this.sample(PETS, 3).join(", ")
        }. Some cities: ${this.sample(CITIES, 3).join(", ")}.`;
      default: {
        const p = this.pick(this.people);
        return `${p.name} | ${p.city} | ${p.pet} | ${p.color}`;
      }
    }
  }

  sample<T>(items: readonly T[], n: number): T[] {
    return this.rng.shuffle([...items]).slice(0, n);
  }
}

function capitalize(s: string): string {
  return s.length ? s[0].toUpperCase() + s.slice(1) : s;
}

/** A sentence continued after a connective; sentence() never starts with a name. */
function lowerFirst(s: string): string {
  return s.length ? s[0].toLowerCase() + s.slice(1) : s;
}

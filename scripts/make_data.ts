// Regenerates everything under data/ from the seeded generators: the benchmark's fixed splits
// and the pretraining corpus. Deterministic: running it again rewrites the same bytes.
//
//   deno run -A scripts/make_data.ts            write data/
//   deno run -A scripts/make_data.ts --check    exit 1 if data/ differs from the generators

import { defineFlags } from "../cli/flags.ts";
import {
  CORPUS_SEED,
  CORPUS_TRAIN_BYTES,
  CORPUS_VALID_BYTES,
  corpusText,
  generateCorpus,
} from "../train/datagen/corpus.ts";
import {
  BENCHMARK_SEED,
  DEFAULT_SIZES,
  makeBenchmark,
  TASK_NAMES,
  toJsonl,
} from "../train/datagen/benchmark.ts";
import { KB_PEOPLE, KB_SEED } from "../train/datagen/kb.ts";
import { CODES_SEED, CODES_SIZES, makeCodes } from "../train/datagen/codes.ts";

const FLAGS = defineFlags({
  name: "make_data",
  about: "Regenerates everything under data/ from the seeded generators (deterministic).",
  usage: "deno run -A scripts/make_data.ts [flags]",
  flags: {
    check: { type: "boolean", help: "write nothing; exit 1 if data/ differs from the generators" },
  },
});

/** Every file under data/, by path relative to the repository root. */
export function dataFiles(): Record<string, string> {
  const bench = makeBenchmark();
  const codes = makeCodes();
  const trainDocs = generateCorpus({ seed: CORPUS_SEED, bytes: CORPUS_TRAIN_BYTES });
  // The validation text comes from another seed and shares no document with train.
  const validDocs = generateCorpus({
    seed: CORPUS_SEED + 1,
    bytes: CORPUS_VALID_BYTES,
    exclude: new Set(trainDocs),
  });
  const files: Record<string, string> = {
    "data/bench/train.jsonl": toJsonl(bench.train),
    "data/bench/test.jsonl": toJsonl(bench.test),
    "data/corpus/train.txt": corpusText(trainDocs),
    "data/corpus/valid.txt": corpusText(validDocs),
    "data/codes/train.jsonl": toJsonl(codes.train),
    "data/codes/test.jsonl": toJsonl(codes.test),
  };
  files["data/README.md"] = readme(files, bench.train.length, bench.test.length);
  return files;
}

function readme(files: Record<string, string>, nTrain: number, nTest: number): string {
  const size = (p: string) =>
    `${(new TextEncoder().encode(files[p]).length / 1024).toFixed(0)} KiB`;
  return [
    "# Generated data",
    "",
    "Written by `deno run -A scripts/make_data.ts`; do not edit by hand (`--check` verifies).",
    "",
    "## bench/: the multi-task benchmark",
    "",
    `- \`train.jsonl\`: ${nTrain} lines, ${size("data/bench/train.jsonl")}; ` +
    `\`test.jsonl\`: ${nTest} lines, ${size("data/bench/test.jsonl")}.`,
    '- One `{"prompt", "response", "task"}` object per line; every prompt is ' +
    "`Q: <question>\\nA: `.",
    `- Tasks ${TASK_NAMES.map((t) => `\`${t}\``).join(", ")}: ${DEFAULT_SIZES.train} train and ` +
    `${DEFAULT_SIZES.test} test examples each. No test prompt is in train.`,
    `- Seed ${BENCHMARK_SEED}; knowledge base seed ${KB_SEED} (${KB_PEOPLE} people). ` +
    "Generators: `train/tasks/`.",
    "",
    "## corpus/: general pretraining text",
    "",
    `- \`train.txt\`: ${size("data/corpus/train.txt")}, seed ${CORPUS_SEED}; ` +
    `\`valid.txt\`: ${size("data/corpus/valid.txt")}, seed ${CORPUS_SEED + 1}, ` +
    "no document shared with train.",
    "- English-like sentences, numbers and sums, the knowledge base's facts in prose, word play",
    "  and short code; no question, none of the benchmark's prompt format.",
    "- Generator: `train/corpus.ts`.",
    "",
    "## codes/: the capacity-bound task of the rank study",
    "",
    `- \`train.jsonl\`: ${CODES_SIZES.keys * CODES_SIZES.repeats} lines, ` +
    `${size("data/codes/train.jsonl")}; \`test.jsonl\`: ${CODES_SIZES.keys} lines, ` +
    `${size("data/codes/test.jsonl")}.`,
    `- ${CODES_SIZES.keys} invented keys, each with an arbitrary three-letter code. Train states`,
    `  every key's code ${CODES_SIZES.repeats} times; test asks every key once, in the same words.`,
    "  A memorisation task: every test prompt is a training prompt, and the score is the share of",
    "  trained facts recalled. The codes are in no pretraining text: answering means storing them.",
    `- Seed ${CODES_SEED}. Generator: \`train/datagen/codes.ts\`.`,
    "",
  ].join("\n");
}

if (import.meta.main) {
  const { options } = FLAGS.main();
  const root = new URL("..", import.meta.url).pathname;
  const files = dataFiles();
  let stale = 0;
  for (const [path, text] of Object.entries(files)) {
    const full = `${root}${path}`;
    if (options.check) {
      let old = "";
      try {
        old = await Deno.readTextFile(full);
      } catch { /* missing counts as stale */ }
      if (old !== text) {
        console.error(`stale: ${path}`);
        stale++;
      }
    } else {
      await Deno.mkdir(full.slice(0, full.lastIndexOf("/")), { recursive: true });
      await Deno.writeTextFile(full, text);
      console.log(`wrote ${path} (${new TextEncoder().encode(text).length} bytes)`);
    }
  }
  if (stale > 0) Deno.exit(1);
}

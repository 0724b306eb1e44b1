/**
 * The study's data: each task's training file split once into the lines it trains on and a
 * validation split that the learning rates are tuned against (the test file is never looked at
 * until the tuned runs). The split is seeded and written into the study folder, so every run of
 * the study, resumed or not, trains on the same lines.
 * @module
 */
import { createHash } from "node:crypto";
import { Rng } from "../../core/rng.ts";
import { PROJECT_ROOT } from "../cli/options.ts";
import { StudyError } from "./errors.ts";
import type { StudyTask } from "./plan.ts";

/** The shipped files of a task (relative to the project root). */
export const TASK_FILES: Record<StudyTask, { train: string; test: string }> = {
  bench: { train: "data/bench/train.jsonl", test: "data/bench/test.jsonl" },
  codes: { train: "data/codes/train.jsonl", test: "data/codes/test.jsonl" },
};

/** Validation lines per task: a tenth of the training file, at most this many. */
export const MAX_VALID_LINES = 300;
export const SPLIT_SEED = 2024;

/** The files a task's runs read. */
export interface TaskData {
  train: string;
  valid: string;
  test: string;
  /** SHA-256 of the shipped train and test files: a study folder belongs to one version. */
  sha256: { train: string; test: string };
}

const fromRoot = (p: string) => decodeURIComponent(new URL(p, PROJECT_ROOT).pathname);

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** Splits the training lines: `valid` lines drawn with a seeded shuffle, the rest in order. */
export function splitLines(lines: readonly string[], seed = SPLIT_SEED): {
  train: string[];
  valid: string[];
} {
  const n = Math.min(MAX_VALID_LINES, Math.floor(lines.length / 10));
  if (n < 1) throw new StudyError(`a training file of ${lines.length} lines is too small to split`);
  const order = new Rng(seed).shuffle(lines.map((_, i) => i));
  const valid = new Set(order.slice(0, n));
  return {
    train: lines.filter((_, i) => !valid.has(i)),
    valid: lines.filter((_, i) => valid.has(i)),
  };
}

/** Writes (again: it is deterministic) the split of `task` under `dir/data/<task>/`. */
export async function prepareTask(dir: string, task: StudyTask): Promise<TaskData> {
  const src = TASK_FILES[task];
  const trainPath = fromRoot(src.train), testPath = fromRoot(src.test);
  let trainText: string, testText: string;
  try {
    [trainText, testText] = await Promise.all([
      Deno.readTextFile(trainPath),
      Deno.readTextFile(testPath),
    ]);
  } catch (e) {
    throw new StudyError(
      `task ${task}: cannot read ${src.train} or ${src.test} (${(e as Error).message}); ` +
        "regenerate them with deno run -A scripts/make_data.ts",
    );
  }
  const lines = trainText.split("\n").filter((l) => l.trim() !== "");
  const { train, valid } = splitLines(lines);
  const out = `${dir}/data/${task}`;
  await Deno.mkdir(out, { recursive: true });
  const data: TaskData = {
    train: `${out}/train.jsonl`,
    valid: `${out}/valid.jsonl`,
    test: testPath,
    sha256: { train: sha256(trainText), test: sha256(testText) },
  };
  await Deno.writeTextFile(data.train, train.join("\n") + "\n");
  await Deno.writeTextFile(data.valid, valid.join("\n") + "\n");
  return data;
}

// Evaluates a model folder on a JSONL test set (DESIGN §9): greedy answers, exact match per
// task and overall. Prints a table; --json writes the scores, --predictions every answer.
//
//   deno task evaluate --model models/base --data data/bench/test.jsonl [--all] [--json OUT]
import { DomainError } from "../core/errors.ts";
import { parseArgs } from "node:util";
import { writeJsonAtomic } from "../train/report/report.ts";
import { DEFAULT_EVAL_PER_TASK, EvalScoreError, formatScoreTable } from "../train/eval/score.ts";
import { evaluateModel, EvaluationError } from "../train/eval/evaluate.ts";
import { DataError } from "../train/data/errors.ts";
import { ConfigError } from "../model/config.ts";
import { SafetensorsError } from "../model/safetensors.ts";
import { TokenizerError } from "../model/tokenizer.ts";

const HELP = `deno task evaluate [flags]

  --model DIR             model folder (default models/base)
  --data FILE             JSONL test set (default data/bench/test.jsonl)
  --prompt-field NAME     (default prompt)
  --response-field NAME   (default response)
  --task-field NAME       (default task; lines without one count as "all")
  --per-task N            examples per task, a fixed seeded subset (default ${DEFAULT_EVAL_PER_TASK})
  --all                   every example
  --seed N                seed of the subset (default 0)
  --max-new-tokens N      (default: the longest reference in tokens + 8)
  --batch-size N          prompts decoded together (default 64)
  --json OUT              write the scores as JSON
  --predictions OUT       write every answer as JSONL
`;

/** A flag value that cannot be used. */
class UsageError extends DomainError {
  static override readonly code: string = "USAGE";
}

function int(flag: string, v: string | undefined, min: number): number | undefined {
  if (v === undefined) return undefined;
  const x = Number(v);
  if (v.trim() === "" || !Number.isInteger(x) || x < min) {
    throw new UsageError(`--${flag} needs an integer >= ${min}, got ${JSON.stringify(v)}`);
  }
  return x;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    strict: true,
    options: {
      help: { type: "boolean" },
      model: { type: "string", default: "models/base" },
      data: { type: "string", default: "data/bench/test.jsonl" },
      "prompt-field": { type: "string" },
      "response-field": { type: "string" },
      "task-field": { type: "string" },
      "per-task": { type: "string" },
      all: { type: "boolean" },
      seed: { type: "string" },
      "max-new-tokens": { type: "string" },
      "batch-size": { type: "string" },
      json: { type: "string" },
      predictions: { type: "string" },
    },
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  if (values.all && values["per-task"] !== undefined) {
    throw new UsageError("--all and --per-task exclude each other");
  }
  const result = await evaluateModel(values.model, values.data, {
    promptField: values["prompt-field"],
    responseField: values["response-field"],
    taskField: values["task-field"],
    perTask: int("per-task", values["per-task"], 1),
    all: values.all ?? false,
    seed: int("seed", values.seed, 0),
    maxNewTokens: int("max-new-tokens", values["max-new-tokens"], 1),
    batchSize: int("batch-size", values["batch-size"], 1),
  });
  const { score } = result;
  console.log(
    `${result.model} on ${result.data}: ${score.n} examples, ` +
      `max_new_tokens ${result.maxNewTokens}, ${(result.ms / 1000).toFixed(1)} s`,
  );
  console.log(formatScoreTable({ accuracy: score }));
  if (values.json) {
    await writeJsonAtomic(values.json, {
      model: result.model,
      data: result.data,
      max_new_tokens: result.maxNewTokens,
      ms: Math.round(result.ms),
      ...score,
    });
  }
  if (values.predictions) {
    await Deno.writeTextFile(
      values.predictions,
      result.predictions.map((p) => JSON.stringify(p)).join("\n") + "\n",
    );
  }
}

try {
  await main();
} catch (e) {
  const known = [
    UsageError,
    EvaluationError,
    EvalScoreError,
    DataError,
    ConfigError,
    SafetensorsError,
    TokenizerError,
  ];
  if (known.some((k) => e instanceof k) || isArgError(e)) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
  throw e;
}

/** parseArgs reports unknown flags and missing values as TypeErrors with an ERR_PARSE code. */
function isArgError(e: unknown): boolean {
  return typeof (e as { code?: unknown })?.code === "string" &&
    String((e as { code: string }).code).startsWith("ERR_PARSE_ARGS");
}

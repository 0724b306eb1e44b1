// Evaluates a model folder on a JSONL test set (docs/architecture.md §9): greedy answers, exact
// match per task and overall. Prints a table; --json writes the scores, --predictions every answer.
//
//   deno task evaluate --model models/base --data data/bench/test.jsonl [--all] [--json OUT]
import { defineFlags, FlagError } from "../cli/flags.ts";
import { writeJsonAtomic } from "../train/report/report.ts";
import { DEFAULT_EVAL_PER_TASK, EvalScoreError, formatScoreTable } from "../train/eval/score.ts";
import { evaluateModel, EvaluationError } from "../train/eval/evaluate.ts";
import { DataError } from "../train/data/errors.ts";
import { ConfigError } from "../model/config.ts";
import { SafetensorsError } from "../model/safetensors.ts";
import { TokenizerError } from "../model/tokenizer.ts";

const FLAGS = defineFlags({
  name: "evaluate",
  about: "Evaluates a model folder on a JSONL test set: greedy answers, exact match per task.",
  usage: "deno task evaluate [flags]",
  flags: {
    model: { type: "string", default: "models/base", metavar: "DIR", help: "model folder" },
    data: {
      type: "string",
      default: "data/bench/test.jsonl",
      metavar: "FILE",
      help: "JSONL test set",
    },
    "prompt-field": { type: "string", default: "prompt", metavar: "NAME", help: "" },
    "response-field": { type: "string", default: "response", metavar: "NAME", help: "" },
    "task-field": {
      type: "string",
      default: "task",
      metavar: "NAME",
      help: 'lines without one count as "all"',
    },
    "messages-field": {
      type: "string",
      default: "messages",
      metavar: "NAME",
      help: "a line with this field is a conversation (chat template)",
    },
    "chat-template": {
      type: "boolean",
      help: "prompt/response lines through the model's chat template too",
    },
    "per-task": {
      type: "int",
      min: 1,
      default: DEFAULT_EVAL_PER_TASK,
      help: "examples per task, a fixed seeded subset",
    },
    all: { type: "boolean", help: "every example" },
    seed: { type: "int", min: 0, default: 0, help: "seed of the subset" },
    "max-new-tokens": {
      type: "int",
      min: 1,
      default: null,
      defaultText: "the longest reference in tokens + 8",
      help: "",
    },
    "batch-size": { type: "int", min: 1, default: 64, help: "prompts decoded together" },
    json: { type: "string", default: null, metavar: "OUT", help: "write the scores as JSON" },
    predictions: {
      type: "string",
      default: null,
      metavar: "OUT",
      help: "write every answer as JSONL",
    },
  },
  check(o, given) {
    if (o.all && given.has("per-task")) {
      throw new FlagError("--all and --per-task exclude each other", "all");
    }
  },
});

async function main(): Promise<void> {
  const { options: o } = FLAGS.main();
  const result = await evaluateModel(o.model, o.data, {
    promptField: o.promptField,
    responseField: o.responseField,
    taskField: o.taskField,
    messagesField: o.messagesField,
    chatTemplate: o.chatTemplate,
    perTask: o.perTask,
    all: o.all,
    seed: o.seed,
    maxNewTokens: o.maxNewTokens ?? undefined,
    batchSize: o.batchSize,
  });
  const { score } = result;
  console.log(
    `${result.model} on ${result.data}: ${score.n} examples, ` +
      `max_new_tokens ${result.maxNewTokens}, ${(result.ms / 1000).toFixed(1)} s`,
  );
  console.log(formatScoreTable({ accuracy: score }));
  if (o.json !== null) {
    await writeJsonAtomic(o.json, {
      model: result.model,
      data: result.data,
      max_new_tokens: result.maxNewTokens,
      ms: Math.round(result.ms),
      ...score,
    });
  }
  if (o.predictions !== null) {
    await Deno.writeTextFile(
      o.predictions,
      result.predictions.map((p) => JSON.stringify(p)).join("\n") + "\n",
    );
  }
}

try {
  await main();
} catch (e) {
  const known = [
    EvaluationError,
    EvalScoreError,
    DataError,
    ConfigError,
    SafetensorsError,
    TokenizerError,
  ];
  if (known.some((k) => e instanceof k)) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
  throw e;
}

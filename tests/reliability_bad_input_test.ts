/**
 * Bad input through the finetune CLI: every mistake ends the process with a non-zero code and
 * one line naming the file (and line), the field or the flag, and what is wrong; nothing it
 * started is left running. (The parsers' own cases are covered in the unit tests of
 * train/options.ts, train/jsonl.ts, model/config.ts and model/safetensors.ts; this checks that
 * their errors reach the user unwrapped.)
 */
import assert from "node:assert/strict";
import { loadModelFolder } from "../model/safetensors.ts";
import { TINY_CONFIG, writeShardedModel, writeTinySetup } from "./support/tiny_run.ts";
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

const SHARD1 = "model-00001-of-00003.safetensors";
const SHARD2 = "model-00002-of-00003.safetensors";

/** `<dir>/m`: the tiny model as a BF16 checkpoint in 3 shards; returns its weight_map. */
async function shardedModel(dir: string): Promise<{ m: string; map: Record<string, string> }> {
  const { tensors } = await loadModelFolder(`${dir}/model`);
  const m = `${dir}/m`;
  const map = await writeShardedModel(m, TINY_CONFIG, tensors, { shards: 3, dtype: "BF16" });
  return { m, map };
}

/** The tensors the index puts in `file`, in model order. */
function inShard(map: Record<string, string>, file: string): string[] {
  return Object.keys(map).filter((k) => map[k] === file);
}

/** Rewrites a safetensors file's JSON header (the data section is kept as it is). */
async function editHeader(path: string, f: (header: Record<string, unknown>) => void) {
  await editFile(path, (b) => {
    const n = Number(new DataView(b.buffer, b.byteOffset).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + n)));
    f(header);
    const json = enc.encode(JSON.stringify(header));
    const out = new Uint8Array(8 + json.length + b.length - 8 - n);
    new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
    out.set(json, 8);
    out.set(b.subarray(8 + n), 8 + json.length);
    return out;
  });
}

/** A case storing the first MLP matrix of shard 2 ([48, 32] BF16: 3072 bytes) as `dtype`. */
function dtypeCase(dtype: string, shape: number[]): Case {
  return {
    name: `a tensor stored as ${dtype}`,
    make: async (dir) => {
      const { m, map } = await shardedModel(dir);
      const name = inShard(map, SHARD2).find((n) => n.includes("mlp"))!;
      await editHeader(`${m}/${SHARD2}`, (h) => {
        const e = h[name] as { dtype: string; shape: number[] };
        e.dtype = dtype;
        e.shape = shape;
      });
      return ["--model", m];
    },
    code: 1,
    error: new RegExp(
      `^finetune: UnsupportedDtypeError: \\S+/m/${SHARD2.replaceAll(".", "\\.")}: tensor ` +
        `"model\\.layers\\.\\d\\.mlp\\.\\w+\\.weight" has dtype ${dtype}; only F32, F16 and BF16 ` +
        `can be read$`,
      "m",
    ),
  };
}

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
    name: "a missing shard",
    make: async (dir) => {
      const { m } = await shardedModel(dir);
      await Deno.remove(`${m}/${SHARD2}`);
      return ["--model", m];
    },
    code: 1,
    error:
      /^finetune: MissingShardError: \S+\/m\/model-00002-of-00003\.safetensors: no such shard; model\.safetensors\.index\.json puts "model\.[\w.]+" and \d+ more in it$/m,
  },
  {
    name: "an index that puts a tensor in a shard without it",
    make: async (dir) => {
      const { m, map } = await shardedModel(dir);
      map[inShard(map, SHARD2)[0]] = SHARD1;
      await Deno.writeTextFile(
        `${m}/model.safetensors.index.json`,
        JSON.stringify({ weight_map: map }),
      );
      return ["--model", m];
    },
    code: 1,
    error:
      /^finetune: ShardIndexError: \S+\/m\/model-00001-of-00003\.safetensors: no tensor "model\.[\w.]+" in this shard, but model\.safetensors\.index\.json puts it here$/m,
  },
  {
    name: "a shard with a tensor the index does not list",
    make: async (dir) => {
      const { m, map } = await shardedModel(dir);
      delete map[inShard(map, SHARD2)[1]];
      await Deno.writeTextFile(
        `${m}/model.safetensors.index.json`,
        JSON.stringify({ weight_map: map }),
      );
      return ["--model", m];
    },
    code: 1,
    error:
      /^finetune: ShardIndexError: \S+\/m\/model-00002-of-00003\.safetensors: tensor "model\.[\w.]+" is in this shard, but model\.safetensors\.index\.json does not list it$/m,
  },
  dtypeCase("F64", [12, 32]),
  dtypeCase("I8", [96, 32]),
  dtypeCase("F8_E4M3", [96, 32]),
  {
    name: "a config that contradicts the weights' shapes",
    make: async (dir) => {
      const { m } = await shardedModel(dir);
      const c = JSON.parse(await Deno.readTextFile(`${m}/config.json`));
      await Deno.writeTextFile(
        `${m}/config.json`,
        JSON.stringify({ ...c, intermediate_size: 64 }),
      );
      return ["--model", m];
    },
    code: 1,
    error:
      /^finetune: TensorShapeError: \S+\/m\/model-0000\d-of-00003\.safetensors: tensor "model\.layers\.0\.mlp\.gate_proj\.weight" has shape \[48, 32\], the config implies \[64, 32\]$/m,
  },
  {
    name: "a truncated shard",
    make: async (dir) => {
      const { m } = await shardedModel(dir);
      await editFile(`${m}/${SHARD2}`, (b) => b.subarray(0, b.length - 100));
      return ["--model", m];
    },
    code: 1,
    error:
      /^finetune: SafetensorsFormatError: \S+\/m\/model-00002-of-00003\.safetensors: truncated or out of range: tensor "model\.[\w.]+" ends at data byte \d+, the data section has \d+ bytes$/m,
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

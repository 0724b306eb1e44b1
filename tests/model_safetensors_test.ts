import assert from "node:assert/strict";
import { expectedTensors, type LlamaConfig, parseLlamaConfig } from "../model/config.ts";
import {
  f16BitsToNumber,
  type HostTensor,
  loadModelFolder,
  MissingTensorError,
  parseSafetensors,
  readSafetensors,
  SafetensorsError,
  SafetensorsFormatError,
  saveModelFolder,
  serializeSafetensors,
  TensorShapeError,
  UnsupportedDtypeError,
  writeSafetensors,
} from "../model/safetensors.ts";
import { Rng } from "../train/rng.ts";
import { LLAMA_TINY as FIXTURE, requireLlamaTiny } from "./support/fixture.ts";

/** Builds a file from a header object and a data section, independently of the product. */
function rawFile(header: unknown, data: Uint8Array, pad = true): Uint8Array {
  let json = new TextEncoder().encode(JSON.stringify(header));
  if (pad && json.length % 8 !== 0) {
    const p = new Uint8Array(Math.ceil(json.length / 8) * 8).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

/** Our own reading of a file's header, to check what the writer produced. */
function headerOf(bytes: Uint8Array): { n: number; json: Record<string, unknown>; text: string } {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const text = new TextDecoder().decode(bytes.subarray(8, 8 + n));
  return { n, json: JSON.parse(text), text };
}

function randomTensor(rng: Rng, shape: number[]): HostTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return { shape, data: rng.normals(n, 3) };
}

/** Element-wise `Object.is`: NaN matches NaN whatever its payload, and −0 differs from +0. */
function assertSameValues(a: Float32Array, b: Float32Array): void {
  assert.equal(a.length, b.length);
  for (let i = 0; i < a.length; i++) {
    assert.ok(Object.is(a[i], b[i]), `element ${i}: ${a[i]} vs ${b[i]}`);
  }
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("safetensors: F32 write/read round trip is bit-exact, header laid out as HF does", async () => {
  const rng = new Rng(11);
  const tensors = new Map<string, HostTensor>([
    ["z.last", randomTensor(rng, [3, 5])],
    ["a.first", randomTensor(rng, [7])],
    ["m.scalar", randomTensor(rng, [])],
    ["m.cube", randomTensor(rng, [2, 3, 4])],
    ["empty", { shape: [0, 4], data: new Float32Array(0) }],
  ]);
  await withTempDir(async (dir) => {
    const path = `${dir}/t.safetensors`;
    await writeSafetensors(path, tensors);
    const bytes = await Deno.readFile(path);
    assert.deepEqual(bytes, serializeSafetensors(tensors));
    const { n, json, text } = headerOf(bytes);
    assert.equal((8 + n) % 8, 0, "data section starts 8-byte aligned");
    assert.match(text, /^\{.*\} *$/, "JSON padded with trailing spaces only");
    assert.deepEqual(json.__metadata__, { format: "pt" });
    // Offsets are contiguous in name order and cover the data section exactly.
    let at = 0;
    for (const name of [...tensors.keys()].sort()) {
      const e = json[name] as { dtype: string; shape: number[]; data_offsets: number[] };
      assert.equal(e.dtype, "F32");
      assert.deepEqual(e.shape, tensors.get(name)!.shape);
      assert.deepEqual(e.data_offsets, [at, at + 4 * tensors.get(name)!.data.length]);
      const raw = bytes.slice(8 + n + at, 8 + n + e.data_offsets[1]);
      assert.deepEqual(new Float32Array(raw.buffer), tensors.get(name)!.data);
      at = e.data_offsets[1];
    }
    assert.equal(bytes.length, 8 + n + at);

    const back = await readSafetensors(path);
    assert.deepEqual(back.metadata, { format: "pt" });
    assert.deepEqual([...back.tensors.keys()].sort(), [...tensors.keys()].sort());
    for (const [name, t] of tensors) {
      assert.deepEqual(back.tensors.get(name)!.shape, t.shape);
      assert.deepEqual(back.tensors.get(name)!.data, t.data);
      assert.equal(back.dtypes.get(name), "F32");
    }
    const inMemory = parseSafetensors(bytes);
    for (const [name, t] of tensors) assert.deepEqual(inMemory.tensors.get(name)!.data, t.data);
    assert.deepEqual(
      [...(await readSafetensors(path, { names: new Set(["m.cube"]) })).tensors.keys()],
      ["m.cube"],
    );
    assert.deepEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name),
      ["t.safetensors"],
      "no temporary file left behind",
    );
  });
});

Deno.test("safetensors: F16 and BF16 decode exactly to f32", async () => {
  const rng = new Rng(5);
  const n = 4096;
  const f16 = new Uint16Array(n);
  for (let i = 0; i < n; i++) f16[i] = rng.u32() & 0xffff;
  // Special values: ±0, smallest subnormal, largest normal, ±inf, a NaN.
  f16.set([0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x7bff, 0x7c00, 0xfc00, 0x7e00], 0);
  const bf16 = new Uint16Array(n);
  for (let i = 0; i < n; i++) bf16[i] = rng.u32() & 0xffff;
  bf16.set([0x0000, 0x8000, 0x3f80, 0xc000, 0x0001, 0x7f80, 0xff80, 0x7fc0], 0);
  const data = new Uint8Array(4 * n);
  data.set(new Uint8Array(f16.buffer), 0);
  data.set(new Uint8Array(bf16.buffer), 2 * n);
  const file = rawFile({
    __metadata__: { source: "test" },
    half: { dtype: "F16", shape: [64, 64], data_offsets: [0, 2 * n] },
    brain: { dtype: "BF16", shape: [n], data_offsets: [2 * n, 4 * n] },
  }, data);
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/h.safetensors`, file);
    for (const got of [parseSafetensors(file), await readSafetensors(`${dir}/h.safetensors`)]) {
      assert.deepEqual(got.metadata, { source: "test" });
      assert.equal(got.dtypes.get("half"), "F16");
      assert.equal(got.dtypes.get("brain"), "BF16");
      const half = got.tensors.get("half")!;
      assert.deepEqual(half.shape, [64, 64]);
      // Independent decoders: the platform's Float16Array and the f32 bit layout.
      const wantHalf = Float32Array.from(new Float16Array(f16.buffer));
      const brainBits = new Uint32Array(n);
      for (let i = 0; i < n; i++) brainBits[i] = bf16[i] * 65536;
      const wantBrain = new Float32Array(brainBits.buffer);
      assertSameValues(half.data, wantHalf);
      assertSameValues(got.tensors.get("brain")!.data, wantBrain);
    }
  });
  assert.equal(f16BitsToNumber(0x3c00), 1);
  assert.equal(f16BitsToNumber(0xc000), -2);
  assert.equal(f16BitsToNumber(0x0001), 2 ** -24);
  assert.equal(f16BitsToNumber(0x7bff), 65504);
});

function rejects(
  bytes: Uint8Array,
  kind: abstract new (...args: never[]) => SafetensorsError,
  pattern: RegExp,
  tensor?: string,
) {
  assert.throws(
    () => parseSafetensors(bytes, {}, "bad.safetensors"),
    (e: unknown) => {
      assert.ok(e instanceof kind, `expected ${kind.name}, got ${e}`);
      assert.match(e.message, pattern);
      assert.match(e.message, /bad\.safetensors/);
      if (tensor) assert.equal(e.tensor, tensor);
      return true;
    },
  );
}

Deno.test("safetensors: malformed files are rejected with typed errors naming the tensor", async () => {
  const d8 = new Uint8Array(8).fill(1);
  const ok = { x: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
  parseSafetensors(rawFile(ok, d8)); // the baseline is valid
  rejects(new Uint8Array(5), SafetensorsFormatError, /truncated/);
  const huge = new Uint8Array(16);
  new DataView(huge.buffer).setBigUint64(0, 1n << 40n, true);
  rejects(huge, SafetensorsFormatError, /header length/);
  rejects(rawFile(ok, d8).subarray(0, 20), SafetensorsFormatError, /truncated/);
  const notJson = rawFile({}, new Uint8Array(0));
  notJson[8] = 0x5b; // "[" makes the header invalid JSON
  rejects(notJson, SafetensorsFormatError, /JSON/);
  rejects(rawFile([1, 2], new Uint8Array(0)), SafetensorsFormatError, /not a JSON object/);
  rejects(rawFile(ok, d8.subarray(0, 6)), SafetensorsFormatError, /truncated|out of range/, "x");
  rejects(
    rawFile({ x: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, d8),
    SafetensorsFormatError,
    /needs 12/,
    "x",
  );
  rejects(
    rawFile({ x: { dtype: "F99", shape: [2], data_offsets: [0, 8] } }, d8),
    SafetensorsFormatError,
    /dtype/,
    "x",
  );
  rejects(
    rawFile({ x: { dtype: "F32", shape: [-2], data_offsets: [0, 8] } }, d8),
    SafetensorsFormatError,
    /shape/,
    "x",
  );
  rejects(
    rawFile({ x: { dtype: "F32", shape: [2], data_offsets: [8, 0] } }, d8),
    SafetensorsFormatError,
    /end before begin/,
    "x",
  );
  rejects(
    rawFile({
      a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
      b: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
    }, new Uint8Array(12)),
    SafetensorsFormatError,
    /overlaps/,
    "b",
  );
  rejects(
    rawFile({ a: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }, d8),
    SafetensorsFormatError,
    /gap/,
    "a",
  );
  rejects(rawFile(ok, new Uint8Array(12)), SafetensorsFormatError, /trailing/);
  rejects(
    rawFile({ __metadata__: { n: 3 }, ...ok }, d8),
    SafetensorsFormatError,
    /__metadata__/,
  );
  const ints = rawFile({ ids: { dtype: "I64", shape: [1], data_offsets: [0, 8] } }, d8);
  rejects(ints, UnsupportedDtypeError, /I64/, "ids");
  // A tensor in an unreadable dtype is fine when it is not asked for.
  assert.equal(parseSafetensors(ints, { names: new Set() }).tensors.size, 0);
  await withTempDir(async (dir) => {
    const path = `${dir}/ints.safetensors`;
    await Deno.writeFile(path, ints);
    await assert.rejects(readSafetensors(path), UnsupportedDtypeError);
    await Deno.writeFile(path, rawFile(ok, d8).subarray(0, 20));
    await assert.rejects(readSafetensors(path), SafetensorsFormatError);
    await assert.rejects(readSafetensors(`${dir}/absent.safetensors`), SafetensorsError);
  });
});

Deno.test("safetensors: writing refuses inconsistent tensors and keeps the old file", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/w.safetensors`;
    const good = { w: { shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) } };
    await writeSafetensors(path, good);
    const before = await Deno.readFile(path);
    await assert.rejects(
      writeSafetensors(path, { w: { shape: [3, 2], data: new Float32Array(4) } }),
      (e: unknown) => e instanceof SafetensorsError && e.tensor === "w",
    );
    assert.deepEqual(await Deno.readFile(path), before);
    await writeSafetensors(path, { w: { shape: [4], data: new Float32Array([5, 6, 7, 8]) } });
    assert.deepEqual(
      (await readSafetensors(path)).tensors.get("w")!.data,
      new Float32Array([5, 6, 7, 8]),
    );
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["w.safetensors"]);
  });
});

const TINY: LlamaConfig = parseLlamaConfig({
  hidden_size: 8,
  intermediate_size: 12,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  vocab_size: 11,
  tie_word_embeddings: true,
});

function randomModel(config: LlamaConfig, rng: Rng): Map<string, HostTensor> {
  return new Map(expectedTensors(config).map((s) => [s.name, randomTensor(rng, s.shape)]));
}

Deno.test("model folder: the fixture loads with every tensor checked", async () => {
  await requireLlamaTiny();
  const { config, tensors } = await loadModelFolder(FIXTURE);
  assert.equal(tensors.size, expectedTensors(config).length);
  // Compare one tensor with the bytes read by hand.
  const bytes = await Deno.readFile(new URL("model.safetensors", FIXTURE));
  const { n, json } = headerOf(bytes);
  const e = json["model.layers.1.mlp.down_proj.weight"] as { data_offsets: number[] };
  const raw = bytes.slice(8 + n + e.data_offsets[0], 8 + n + e.data_offsets[1]);
  assert.deepEqual(
    tensors.get("model.layers.1.mlp.down_proj.weight")!.data,
    new Float32Array(raw.buffer),
  );
});

Deno.test("model folder: save/load round trip; missing or misshaped tensors are named", async () => {
  const rng = new Rng(21);
  const tensors = randomModel(TINY, rng);
  await withTempDir(async (dir) => {
    // A redundant lm_head next to tied embeddings is not written.
    const withHead = new Map(tensors);
    withHead.set("lm_head.weight", randomTensor(rng, [11, 8]));
    await saveModelFolder(dir, TINY, withHead);
    const back = await loadModelFolder(dir);
    assert.deepEqual(back.config, TINY);
    assert.equal(back.tensors.size, tensors.size);
    for (const [name, t] of tensors) assert.deepEqual(back.tensors.get(name), t);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "config.json",
      "model.safetensors",
    ]);

    const missing = new Map(tensors);
    missing.delete("model.layers.1.self_attn.v_proj.weight");
    await writeSafetensors(`${dir}/model.safetensors`, missing);
    await assert.rejects(loadModelFolder(dir), (e: unknown) => {
      assert.ok(e instanceof MissingTensorError);
      assert.equal(e.tensor, "model.layers.1.self_attn.v_proj.weight");
      assert.match(e.message, /v_proj/);
      return true;
    });

    const misshaped = new Map(tensors);
    misshaped.set("model.layers.0.mlp.up_proj.weight", randomTensor(rng, [8, 12]));
    await writeSafetensors(`${dir}/model.safetensors`, misshaped);
    await assert.rejects(loadModelFolder(dir), (e: unknown) => {
      assert.ok(e instanceof TensorShapeError);
      assert.equal(e.tensor, "model.layers.0.mlp.up_proj.weight");
      assert.deepEqual(e.expected, [12, 8]);
      assert.deepEqual(e.actual, [8, 12]);
      return true;
    });

    // A weight stored as integers is a dtype error naming it.
    const data = new Uint8Array(8 * 4);
    const bad = rawFile({
      "model.norm.weight": { dtype: "I32", shape: [8], data_offsets: [0, 32] },
    }, data);
    await Deno.writeFile(`${dir}/model.safetensors`, bad);
    await assert.rejects(loadModelFolder(dir), (e: unknown) => {
      assert.ok(e instanceof UnsupportedDtypeError);
      assert.equal(e.tensor, "model.norm.weight");
      return true;
    });

    await Deno.remove(`${dir}/model.safetensors`);
    await assert.rejects(loadModelFolder(dir), SafetensorsError);
  });
});

Deno.test("model folder: sharded checkpoints load through the index", async () => {
  const rng = new Rng(33);
  const tensors = randomModel(TINY, rng);
  const names = [...tensors.keys()];
  const shardA = new Map(names.slice(0, 7).map((n) => [n, tensors.get(n)!]));
  const shardB = new Map(names.slice(7).map((n) => [n, tensors.get(n)!]));
  await withTempDir(async (dir) => {
    await saveModelFolder(dir, TINY, tensors);
    await Deno.remove(`${dir}/model.safetensors`);
    await writeSafetensors(`${dir}/model-00001-of-00002.safetensors`, shardA);
    await writeSafetensors(`${dir}/model-00002-of-00002.safetensors`, shardB);
    const weightMap: Record<string, string> = {};
    for (const n of shardA.keys()) weightMap[n] = "model-00001-of-00002.safetensors";
    for (const n of shardB.keys()) weightMap[n] = "model-00002-of-00002.safetensors";
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }),
    );
    const back = await loadModelFolder(dir);
    for (const [name, t] of tensors) assert.deepEqual(back.tensors.get(name), t);

    // The index points a tensor at a shard that does not hold it.
    weightMap[names[0]] = "model-00002-of-00002.safetensors";
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ weight_map: weightMap }),
    );
    await assert.rejects(
      loadModelFolder(dir),
      (e: unknown) => e instanceof MissingTensorError && e.tensor === names[0],
    );
  });
});

import assert from "node:assert/strict";
import { expectedTensors, type LlamaConfig, parseLlamaConfig } from "../model/config.ts";
import { f32BitsToBf16, f32BitsToF16 } from "../model/half_float.ts";
import {
  f16BitsToNumber,
  type FloatDtype,
  type HostTensor,
  inspectModelFolder,
  loadModelFolder,
  MissingShardError,
  MissingTensorError,
  parseSafetensors,
  readSafetensors,
  SafetensorsError,
  SafetensorsFormatError,
  saveModelFolder,
  serializeSafetensors,
  ShardIndexError,
  TensorShapeError,
  UnsupportedDtypeError,
  writeSafetensors,
} from "../model/safetensors.ts";
import { Rng } from "../core/rng.ts";
import { LLAMA_TINY as FIXTURE, requireLlamaTiny } from "./support/fixture.ts";
import { writeShardedModel } from "./support/tiny_run.ts";

const p5 = (k: number) => String(k).padStart(5, "0");

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

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

/**
 * A safetensors file of `tensors` laid out by hand, F32 except the tensors `dtypes` names (whose
 * bytes are zero when the dtype is not a float we write): what a checkpoint in another dtype
 * looks like.
 */
function rawModelFile(
  tensors: ReadonlyMap<string, HostTensor>,
  dtypes: ReadonlyMap<string, string> = new Map(),
): Uint8Array {
  const size: Record<string, number> = { F64: 8, F32: 4, I32: 4, BF16: 2, F16: 2, I8: 1 };
  size.F8_E4M3 = 1;
  const header: Record<string, unknown> = {};
  const parts: Uint8Array[] = [];
  let at = 0;
  for (const [name, t] of tensors) {
    const dtype = dtypes.get(name) ?? "F32";
    const n = t.data.length * size[dtype];
    header[name] = { dtype, shape: t.shape, data_offsets: [at, at + n] };
    parts.push(dtype === "F32" ? new Uint8Array(t.data.slice().buffer) : new Uint8Array(n));
    at += n;
  }
  const data = new Uint8Array(at);
  let k = 0;
  for (const p of parts) {
    data.set(p, k);
    k += p.length;
  }
  return rawFile(header, data);
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
    await Deno.writeFile(
      `${dir}/model.safetensors`,
      rawModelFile(tensors, new Map([["model.norm.weight", "I32"]])),
    );
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
      (e: unknown) => e instanceof ShardIndexError && e.tensor === names[0],
    );
  });
});

// ---- 16-bit rounding against a float64 reference ----

const f32Of = (bits: number) => new Float32Array(new Uint32Array([bits >>> 0]).buffer)[0];
const bf16Value = (h: number) => f32Of(h * 65536);

/**
 * Round to nearest, ties to even, computed on float64 values: the candidates are the format's
 * non-negative finite values in ascending bit order plus its infinity standing for the next
 * binade's start (2^128 for BF16, 2^16 for F16), so that overflow rounds as IEEE says; a tie
 * takes the candidate whose bits are even.
 */
class RoundingReference {
  readonly values: number[] = [];
  readonly bits: number[] = [];
  constructor(decode: (h: number) => number, infBits: number, infValue: number) {
    for (let h = 0; h < infBits; h++) {
      this.values.push(decode(h));
      this.bits.push(h);
    }
    this.values.push(infValue);
    this.bits.push(infBits);
    for (let i = 1; i < this.values.length; i++) assert.ok(this.values[i] > this.values[i - 1]);
  }
  /** The rounded bits, or "nan"; `tie` is set when `x` was exactly between two candidates. */
  tie = false;
  round(x: number): number | "nan" {
    this.tie = false;
    if (Number.isNaN(x)) return "nan";
    const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
    const a = Math.abs(x);
    const v = this.values;
    const last = v.length - 1;
    if (a >= v[last]) return sign | this.bits[last];
    let lo = 0, hi = last; // v[lo] <= a < v[hi]
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (v[mid] <= a) lo = mid;
      else hi = mid;
    }
    const below = a - v[lo], above = v[hi] - a;
    this.tie = below === above;
    const pick = below < above ? lo : above < below ? hi : (this.bits[lo] & 1) === 0 ? lo : hi;
    return sign | this.bits[pick];
  }
}

const BF16_REF = new RoundingReference(bf16Value, 0x7f80, 2 ** 128);
const F16_REF = new RoundingReference(f16BitsToNumber, 0x7c00, 2 ** 16);

/** The f32 inputs: random bit patterns, every 16-bit value, the midpoints and their neighbours. */
function roundingInputs(ref: RoundingReference, rng: Rng): number[] {
  const out: number[] = [];
  const bitsOf = (x: number) => new Uint32Array(new Float32Array([x]).buffer)[0];
  for (let i = 0; i < 200_000; i++) out.push(rng.u32());
  const v = ref.values;
  for (let i = 0; i + 1 < v.length; i++) {
    const mid = (v[i] + v[i + 1]) / 2; // a tie, exact in f32 for both formats
    assert.equal(f32Of(bitsOf(mid)), mid);
    for (const x of [v[i], mid]) {
      const b = bitsOf(x);
      out.push(b, b + 1, b - 1, (b | 0x80000000) >>> 0, ((b + 1) | 0x80000000) >>> 0);
    }
  }
  out.push(
    0x00000000, // +0
    0x80000000, // -0
    0x00000001, // smallest f32 subnormal
    0x807fffff, // largest f32 subnormal, negative
    0x7f7fffff, // largest f32
    0xff7fffff,
    0x7f800000, // +inf
    0xff800000, // -inf
    0x7fc00000, // quiet NaN
    0x7f800001, // signalling NaN
    0xffffffff, // negative NaN with a full payload
    0x7fbfffff,
  );
  // The top of the f32 range: finite values that round to infinity in both formats.
  for (let b = 0x7f7f8000; b < 0x7f7f8400; b++) out.push(b, (b | 0x80000000) >>> 0);
  return out.map((b) => b >>> 0);
}

Deno.test("16-bit rounding: BF16 and F16 round to nearest, ties to even, like PyTorch", () => {
  const rng = new Rng(77);
  for (
    const [name, ref, round, nan] of [
      ["BF16", BF16_REF, f32BitsToBf16, (_s: number) => 0x7fc0],
      ["F16", F16_REF, f32BitsToF16, (s: number) => s | 0x7e00],
    ] as const
  ) {
    let ties = 0, subnormals = 0, overflows = 0;
    for (const b of roundingInputs(ref, rng)) {
      const x = f32Of(b);
      const want = ref.round(x);
      const got = round(b);
      const sign = (b >>> 16) & 0x8000;
      if (want === "nan") {
        assert.equal(got, nan(sign), `${name} of NaN 0x${b.toString(16)}`);
        continue;
      }
      assert.equal(
        got,
        want,
        `${name} of ${x} (0x${b.toString(16)}): 0x${got.toString(16)}, want 0x${want.toString(16)}`,
      );
      if (ref.tie) ties++;
      if ((want & 0x7fff) !== 0 && (want & (name === "BF16" ? 0x7f80 : 0x7c00)) === 0) {
        subnormals++;
      }
      if (Number.isFinite(x) && (want & 0x7fff) === (name === "BF16" ? 0x7f80 : 0x7c00)) {
        overflows++;
      }
    }
    // The inputs did exercise the hard cases.
    assert.ok(ties > 60_000, `${name}: ${ties} ties`);
    assert.ok(subnormals > 1_000, `${name}: ${subnormals} subnormal results`);
    assert.ok(overflows > 1_000, `${name}: ${overflows} finite values rounding to infinity`);
  }
  // A few by hand: ties go to the even neighbour; the overflow thresholds; half the smallest
  // subnormal goes to zero, anything above it to that subnormal.
  assert.equal(f32BitsToBf16(0x3f808000), 0x3f80); // 1 + 2^-8: tie, 1 is even
  assert.equal(f32BitsToBf16(0x3f818000), 0x3f82); // 1 + 3·2^-8: tie, up to even
  assert.equal(f32BitsToBf16(0x7f7f8000), 0x7f80); // half an ulp above the largest: infinity
  assert.equal(f32BitsToBf16(0x7f7f7fff), 0x7f7f);
  assert.equal(f32BitsToF16(0x477ff000), 0x7c00); // 65520: tie between 65504 and 2^16
  assert.equal(f32BitsToF16(0x477fefff), 0x7bff);
  assert.equal(f32BitsToF16(0x33000000), 0x0000); // 2^-25: tie, 0 is even
  assert.equal(f32BitsToF16(0x33000001), 0x0001);
  assert.equal(f32BitsToF16(0xb3400000), 0x8001); // -1.5·2^-25 → -2^-24
  // The platform's own f32 → f16 (Math.f16round) agrees on every finite input above.
  const f16round = (Math as unknown as { f16round?: (x: number) => number }).f16round;
  if (f16round) {
    for (let i = 0; i < 50_000; i++) {
      const b = rng.u32() >>> 0;
      const x = f32Of(b);
      if (Number.isNaN(x)) continue;
      assert.ok(Object.is(f16BitsToNumber(f32BitsToF16(b)), f16round(x)), `${x}`);
    }
  }
});

Deno.test("16-bit files: written values are the rounded ones; 16-bit in, same bits out", async () => {
  // Every 16-bit pattern decoded to f32 and written back gives the same bits (NaNs canonical).
  const all = new Uint16Array(65536).map((_, i) => i);
  const bf = Float32Array.from(all, bf16Value);
  const hf = Float32Array.from(all, f16BitsToNumber);
  const tensors = new Map<string, HostTensor>([
    ["bf", { shape: [256, 256], data: bf }],
    ["hf", { shape: [65536], data: hf }],
    ["norm", { shape: [3], data: new Float32Array([1, 0.1, -3e-7]) }],
  ]);
  const dtypes = new Map<string, FloatDtype>([["bf", "BF16"], ["hf", "F16"]]);
  const bytes = serializeSafetensors(tensors, { format: "pt" }, dtypes);
  const { n, json } = headerOf(bytes);
  // Wider dtypes first, then by name: the F32 tensor's data starts 4-byte aligned.
  assert.deepEqual(json.norm, { dtype: "F32", shape: [3], data_offsets: [0, 12] });
  assert.deepEqual(json.bf, { dtype: "BF16", shape: [256, 256], data_offsets: [12, 131084] });
  assert.deepEqual(json.hf, { dtype: "F16", shape: [65536], data_offsets: [131084, 262156] });
  const raw = (name: string) => {
    const [a, b] = (json[name] as { data_offsets: number[] }).data_offsets;
    return new Uint16Array(bytes.slice(8 + n + a, 8 + n + b).buffer);
  };
  for (
    const [name, isNan, nanBits] of [
      ["bf", (h: number) => (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0, () => 0x7fc0],
      // A NaN decodes to the platform's NaN, which keeps no sign: F16 NaNs come back as 0x7e00.
      ["hf", (h: number) => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0, () => 0x7e00],
    ] as const
  ) {
    const got = raw(name);
    for (let h = 0; h < 65536; h++) {
      assert.equal(got[h], isNan(h) ? nanBits() : h, `${name} 0x${h.toString(16)}`);
    }
  }
  // Values that are not 16-bit ones come back as the reference rounds them.
  const rng = new Rng(3);
  const x = rng.normals(4096, 1);
  for (
    const [dtype, ref, decode] of [
      ["BF16", BF16_REF, bf16Value],
      ["F16", F16_REF, f16BitsToNumber],
    ] as const
  ) {
    await withTempDir(async (dir) => {
      await writeSafetensors(`${dir}/x.safetensors`, { x: { shape: [4096], data: x } }, {
        format: "pt",
      }, dtype);
      const back = await readSafetensors(`${dir}/x.safetensors`);
      assert.equal(back.dtypes.get("x"), dtype);
      assert.deepEqual(back.metadata, { format: "pt" });
      const want = Float32Array.from(x, (v) => decode(ref.round(v) as number));
      assertSameValues(back.tensors.get("x")!.data, want);
    });
  }
});

// ---- model folders: written like the input ----

/**
 * config.json fields this project does not use (harmless ones: an unknown field is refused, since
 * it might change the math); they must survive a save.
 */
const UNUSED_FIELDS = {
  initializer_range: 0.02,
  use_cache: true,
  transformers_version: "4.44.2",
};

const COMPANIONS: Record<string, string> = {
  "generation_config.json": '{"bos_token_id": 1, "eos_token_id": 2, "do_sample": false}\n',
  "tokenizer_config.json": '{"model_max_length": 2048}\n',
  "special_tokens_map.json": '{"bos_token": "<s>"}\n',
  "tokenizer.model": "\u0000\u0001sentencepiece bytes\u00ff",
  "chat_template.jinja": "{% for m in messages %}{{ m.content }}{% endfor %}",
};

async function headerAt(path: string) {
  return headerOf(await Deno.readFile(path));
}

Deno.test("model folder: sharded BF16 in, sharded BF16 out, with index, config and companions", async () => {
  const rng = new Rng(41);
  const tensors = randomModel(TINY, rng);
  await withTempDir(async (dir) => {
    const src = `${dir}/src`;
    await writeShardedModel(src, TINY, tensors, {
      shards: 3,
      dtype: "BF16",
      extra: UNUSED_FIELDS,
    });
    for (const [f, text] of Object.entries(COMPANIONS)) {
      await Deno.writeTextFile(`${src}/${f}`, text);
    }
    const model = await loadModelFolder(src);
    assert.equal(model.source.sharded, true);
    assert.deepEqual(new Set(model.source.dtypes.values()), new Set(["BF16"]));
    assert.ok(!model.tensors.has("lm_head.weight"), "tied: no lm_head");

    // 700 bytes per shard at most: a layer's matrices hold 2·(64+32+32+64+96+96+96) = 960.
    const out = `${dir}/out`;
    const saved = await saveModelFolder(out, model.config, model.tensors, {
      source: model.source,
      maxShardBytes: 700,
    });
    assert.equal(saved.torchDtype, "bfloat16");
    const index = JSON.parse(await Deno.readTextFile(`${out}/model.safetensors.index.json`));
    const files = [...new Set(Object.values(index.weight_map) as string[])].sort();
    assert.deepEqual(files, saved.files);
    assert.ok(files.length >= 3, `${files.length} shards`);
    files.forEach((f, i) =>
      assert.equal(f, `model-${p5(i + 1)}-of-${p5(files.length)}.safetensors`)
    );
    assert.deepEqual(Object.keys(index.weight_map), Object.keys(index.weight_map).sort());
    assert.deepEqual(
      Object.keys(index.weight_map).sort(),
      expectedTensors(TINY).map((t) => t.name).sort(),
    );
    let total = 0;
    for (const f of files) {
      const bytes = await Deno.readFile(`${out}/${f}`);
      const { n, json } = headerOf(bytes);
      assert.deepEqual(json.__metadata__, { format: "pt" });
      const names = Object.keys(json).filter((k) => k !== "__metadata__").sort();
      assert.deepEqual(
        names,
        Object.entries(index.weight_map).filter(([, v]) => v === f).map(([k]) => k).sort(),
        `${f} holds what the index puts in it`,
      );
      assert.ok(bytes.length - 8 - n <= 700, `${f}: ${bytes.length - 8 - n} data bytes`);
      total += bytes.length - 8 - n;
      for (const name of names) {
        assert.equal((json[name] as { dtype: string }).dtype, "BF16");
      }
    }
    assert.deepEqual(index.metadata, { total_size: total });
    assert.equal(saved.totalBytes, total);
    // Hugging Face's greedy split in model order: no shard could have taken the next tensor.
    const order = expectedTensors(TINY);
    const bytesOf = (name: string) =>
      2 * order.find((t) => t.name === name)!.shape.reduce(
        (a, b) => a * b,
        1,
      );
    const shardOf = order.map((t) => index.weight_map[t.name] as string);
    assert.deepEqual(shardOf, [...shardOf].sort(), "shards follow model order");
    for (let i = 0; i + 1 < files.length; i++) {
      const used = order.filter((t) => shardOf[order.indexOf(t)] === files[i])
        .reduce((s, t) => s + bytesOf(t.name), 0);
      const next = order.find((t) => index.weight_map[t.name] === files[i + 1])!;
      assert.ok(used + bytesOf(next.name) > 700, `${files[i]} could have held ${next.name}`);
    }
    // Unchanged weights are the same bits as the source's.
    const back = await loadModelFolder(out);
    for (const [name, t] of model.tensors) assertSameValues(back.tensors.get(name)!.data, t.data);
    // config.json: the source's fields, every one, torch_dtype for what was written.
    const srcConfig = JSON.parse(await Deno.readTextFile(`${src}/config.json`));
    const outConfig = JSON.parse(await Deno.readTextFile(`${out}/config.json`));
    assert.deepEqual(outConfig, { ...srcConfig, torch_dtype: "bfloat16" });
    for (const [f, text] of Object.entries(COMPANIONS)) {
      assert.equal(await Deno.readTextFile(`${out}/${f}`), text, f);
    }

    // --save-dtype float32: one F32 file (5 GB shards by default), torch_dtype float32, and the
    // shards and index of the earlier save are gone.
    const f32 = await saveModelFolder(out, model.config, model.tensors, {
      source: model.source,
      dtype: "F32",
    });
    assert.deepEqual(f32.files, ["model.safetensors"]);
    assert.deepEqual(
      [...Deno.readDirSync(out)].map((e) => e.name).filter((n) => n.startsWith("model")),
      ["model.safetensors"],
    );
    const { json } = await headerAt(`${out}/model.safetensors`);
    for (const spec of expectedTensors(TINY)) {
      assert.equal((json[spec.name] as { dtype: string }).dtype, "F32");
    }
    assert.ok(!("lm_head.weight" in json));
    assert.equal(JSON.parse(await Deno.readTextFile(`${out}/config.json`)).torch_dtype, "float32");
    // F16 over a sharded output: the single file goes.
    await saveModelFolder(out, model.config, model.tensors, {
      source: model.source,
      dtype: "F16",
      maxShardBytes: 1000,
    });
    assert.ok(!(await exists(`${out}/model.safetensors`)));
    const half = await loadModelFolder(out);
    assert.deepEqual(new Set(half.source.dtypes.values()), new Set(["F16"]));
    assert.equal(half.source.configJson.torch_dtype, "float16");
    for (const [name, t] of model.tensors) {
      const want = Float32Array.from(t.data, (v) => f16BitsToNumber(F16_REF.round(v) as number));
      assertSameValues(half.tensors.get(name)!.data, want);
    }
  });
});

Deno.test("model folder: a single F16 file stays a single F16 file; no source means F32", async () => {
  const rng = new Rng(43);
  const tensors = randomModel(TINY, rng);
  await withTempDir(async (dir) => {
    await saveModelFolder(`${dir}/src`, TINY, tensors, { dtype: "F16" });
    const model = await loadModelFolder(`${dir}/src`);
    assert.equal(model.source.sharded, false);
    const saved = await saveModelFolder(`${dir}/out`, model.config, model.tensors, {
      source: model.source,
    });
    assert.deepEqual(saved.files, ["model.safetensors"]);
    assert.equal(saved.torchDtype, "float16");
    assert.deepEqual(
      await Deno.readFile(`${dir}/out/model.safetensors`),
      await Deno.readFile(`${dir}/src/model.safetensors`),
    );
    // A source of another model (the config changed) writes the config as this project does.
    await saveModelFolder(`${dir}/plain`, TINY, tensors);
    assert.equal(
      JSON.parse(await Deno.readTextFile(`${dir}/plain/config.json`)).torch_dtype,
      "float32",
    );
    const { json } = await headerAt(`${dir}/plain/model.safetensors`);
    assert.equal((json["model.norm.weight"] as { dtype: string }).dtype, "F32");
  });
});

// ---- model folders: bad input, found from the headers ----

/** A sharded F32 copy of TINY in `dir` (3 shards); returns its weight_map and tensors. */
async function shardedFolder(dir: string) {
  const tensors = randomModel(TINY, new Rng(51));
  const weightMap = await writeShardedModel(dir, TINY, tensors, { shards: 3, dtype: "F32" });
  return { weightMap, tensors };
}

async function writeIndex(dir: string, weightMap: Record<string, string>) {
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }),
  );
}

async function rejectsFolder(
  dir: string,
  kind: abstract new (...args: never[]) => SafetensorsError,
  file: RegExp,
  tensor: string,
  message: RegExp,
) {
  await assert.rejects(inspectModelFolder(dir), (e: unknown) => {
    assert.ok(e instanceof kind, `expected ${kind.name}, got ${e}`);
    assert.match(e.source, file);
    assert.equal(e.tensor, tensor);
    assert.match(e.message, message);
    assert.ok(e.message.includes(e.source), "the message names the file");
    assert.ok(e.message.includes(`"${tensor}"`), "the message names the tensor");
    return true;
  });
}

Deno.test("model folder: each bad checkpoint is a typed error naming the file and the tensor", async () => {
  await withTempDir(async (dir) => {
    const { weightMap, tensors } = await shardedFolder(dir);
    await inspectModelFolder(dir); // the baseline is good
    const shard2 = "model-00002-of-00003.safetensors";
    const in2 = Object.keys(weightMap).filter((k) => weightMap[k] === shard2);

    // A shard the index names is missing.
    await Deno.rename(`${dir}/${shard2}`, `${dir}/away`);
    await rejectsFolder(dir, MissingShardError, /model-00002-of-00003/, in2[0], /no such shard/);
    await Deno.rename(`${dir}/away`, `${dir}/${shard2}`);

    // The index lists a tensor in a shard that does not hold it.
    const moved = { ...weightMap, [in2[0]]: "model-00001-of-00003.safetensors" };
    await writeIndex(dir, moved);
    await rejectsFolder(dir, ShardIndexError, /model-00001-of-00003/, in2[0], /puts it here/);

    // A shard holds a tensor the index does not list.
    const dropped = { ...weightMap };
    delete dropped[in2[1]];
    await writeIndex(dir, dropped);
    await rejectsFolder(dir, ShardIndexError, /model-00002-of-00003/, in2[1], /does not list it/);
    await writeIndex(dir, weightMap);

    // A tensor in a dtype we cannot read, named with its dtype.
    for (const dtype of ["F64", "I8", "F8_E4M3"]) {
      const part = new Map(in2.map((n) => [n, tensors.get(n)!]));
      await Deno.writeFile(`${dir}/${shard2}`, rawModelFile(part, new Map([[in2[2], dtype]])));
      await assert.rejects(inspectModelFolder(dir), (e: unknown) => {
        assert.ok(e instanceof UnsupportedDtypeError, String(e));
        assert.equal(e.dtype, dtype);
        assert.equal(e.tensor, in2[2]);
        assert.match(e.message, new RegExp(`${shard2}: tensor "${in2[2]}" has dtype ${dtype}`));
        return true;
      });
    }
    await writeShardedModel(dir, TINY, tensors, { shards: 3, dtype: "F32" });

    // A truncated shard.
    const full = await Deno.readFile(`${dir}/${shard2}`);
    await Deno.writeFile(`${dir}/${shard2}`, full.subarray(0, full.length - 5));
    await assert.rejects(inspectModelFolder(dir), (e: unknown) => {
      assert.ok(e instanceof SafetensorsFormatError, String(e));
      assert.match(e.message, new RegExp(`${shard2}: truncated`));
      assert.ok(in2.includes(e.tensor!));
      return true;
    });
    await Deno.writeFile(`${dir}/${shard2}`, full);

    // A config that contradicts the weights.
    const c = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...c, intermediate_size: 16 }));
    await rejectsFolder(
      dir,
      TensorShapeError,
      /model-00002-of-00003/,
      "model.layers.0.mlp.gate_proj.weight",
      /has shape \[12, 8\], the config implies \[16, 8\]/,
    );
    await Deno.writeTextFile(
      `${dir}/config.json`,
      JSON.stringify({ ...c, tie_word_embeddings: false }),
    );
    await rejectsFolder(
      dir,
      MissingTensorError,
      /model\.safetensors\.index\.json/,
      "lm_head.weight",
      /missing tensor/,
    );
  });
});

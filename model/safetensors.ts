/**
 * The `safetensors` format as Hugging Face writes it: an 8-byte little-endian header length, a
 * JSON header (`name -> {dtype, shape, data_offsets}` plus `__metadata__`), then the raw
 * little-endian tensor bytes, contiguous and in offset order. We read F32, F16 and BF16 into f32
 * and write any of the three (rounding to nearest, ties to even, as PyTorch does). Model folders
 * (`config.json` + `model.safetensors`, or shards listed by `model.safetensors.index.json`) are
 * checked from their headers alone (shards against the index, dtypes, shapes against the config,
 * truncation) before any tensor is decoded, and are written back the way they came: same dtype,
 * same sharding, config.json and the tokenizer's files carried over.
 */

import { DomainError } from "../core/errors.ts";
import { z } from "zod";
import {
  checkConfigAgainstTensors,
  expectedTensors,
  type LlamaConfig,
  llamaConfigToJson,
  parseLlamaConfig,
  readLlamaConfig,
} from "./config.ts";
import {
  encodeFloats,
  f16BitsToNumber,
  FLOAT_DTYPE_BYTES,
  type FloatDtype,
  TORCH_DTYPE,
} from "./half_float.ts";

export { f16BitsToNumber, type FloatDtype };

/** A tensor in host memory: row-major f32 values. */
export interface HostTensor {
  shape: number[];
  data: Float32Array;
}

/** Any problem with a safetensors file or a model folder. */
export class SafetensorsError extends DomainError {
  static override readonly code: string = "SAFETENSORS";
  static readonly fields: z.ZodObject = z.object({
    source: z.string(),
    tensor: z.string().optional(),
  });
  /** The file (or `<bytes>`) the problem is in. */
  readonly source: string;
  /** The tensor to blame, when there is one. */
  readonly tensor?: string;
  constructor(message: string, source: string, tensor?: string) {
    super(message);
    this.source = source;
    this.tensor = tensor;
  }
}

/** The bytes are not a valid safetensors file: bad header, bad offsets, or truncated. */
export class SafetensorsFormatError extends SafetensorsError {
  static override readonly code: string = "SAFETENSORS_FORMAT";
  constructor(message: string, source: string, tensor?: string) {
    super(message, source, tensor);
  }
}

/** A tensor we need is stored in a dtype we cannot read as f32. */
export class UnsupportedDtypeError extends SafetensorsError {
  static override readonly code: string = "UNSUPPORTED_DTYPE";
  static override readonly fields: z.ZodObject = SafetensorsError.fields.extend({
    dtype: z.string(),
  });
  readonly dtype: string;
  constructor(message: string, source: string, tensor: string, dtype: string) {
    super(message, source, tensor);
    this.dtype = dtype;
  }
}

/** A tensor the model needs is not in the files. */
export class MissingTensorError extends SafetensorsError {
  static override readonly code: string = "MISSING_TENSOR";
  constructor(message: string, source: string, tensor: string) {
    super(message, source, tensor);
  }
}

/** A tensor has another shape than the config implies. */
export class TensorShapeError extends SafetensorsError {
  static override readonly code: string = "TENSOR_SHAPE";
  static override readonly fields: z.ZodObject = SafetensorsError.fields.extend({
    expected: z.array(z.number()),
    actual: z.array(z.number()),
  });
  readonly expected: number[];
  readonly actual: number[];
  constructor(
    message: string,
    source: string,
    tensor: string,
    expected: number[],
    actual: number[],
  ) {
    super(message, source, tensor);
    this.expected = expected;
    this.actual = actual;
  }
}

/** A shard that `model.safetensors.index.json` lists is not in the folder. */
export class MissingShardError extends SafetensorsError {
  static override readonly code: string = "MISSING_SHARD";
  /** `source`: the missing shard's path; `tensor`: the first tensor the index puts in it. */
  constructor(message: string, source: string, tensor: string) {
    super(message, source, tensor);
  }
}

/**
 * `model.safetensors.index.json` and a shard disagree: the index puts a tensor in a shard that
 * does not hold it, or a shard holds a tensor the index does not put there.
 */
export class ShardIndexError extends SafetensorsError {
  static override readonly code: string = "SHARD_INDEX";
  /** `source`: the shard's path. */
  constructor(message: string, source: string, tensor: string) {
    super(message, source, tensor);
  }
}

/** Bytes per element of every dtype the format defines (we only decode the float ones). */
const DTYPE_SIZE: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  U16: 2,
  I16: 2,
  F16: 2,
  BF16: 2,
  U32: 4,
  I32: 4,
  F32: 4,
  U64: 8,
  I64: 8,
  F64: 8,
};
const READABLE = new Set(["F32", "F16", "BF16"]);

/** The Rust reference implementation refuses larger headers; so do we (a corrupt length). */
const MAX_HEADER_BYTES = 100_000_000;

/** One tensor's entry in the header; offsets are relative to the start of the data section. */
export interface TensorEntry {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

/** A parsed header: tensor entries in offset order, the metadata, and the data section's size. */
export interface SafetensorsHeader {
  entries: TensorEntry[];
  metadata: Record<string, string>;
  /** Byte offset of the data section in the file (8 + header length). */
  dataStart: number;
  dataLength: number;
}

/** What `parseSafetensors` and `readSafetensors` return. */
export interface SafetensorsContents {
  tensors: Map<string, HostTensor>;
  /** The dtype each tensor was stored in. */
  dtypes: Map<string, string>;
  metadata: Record<string, string>;
}

/** Options for reading: which tensors to decode (default: all). */
export interface ReadOptions {
  names?: ReadonlySet<string>;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/**
 * Parses and validates the header given the first 8 + n bytes' content and the file's total size.
 * Every entry is checked: known dtype, integer shape, byte length = numel · dtype size, offsets in
 * range, and entries contiguous without gaps or overlaps, covering the data section exactly (as
 * the reference implementation requires).
 */
export function parseHeader(
  headerJson: Uint8Array,
  fileSize: number,
  source: string,
): SafetensorsHeader {
  const dataStart = 8 + headerJson.length;
  if (fileSize < dataStart) {
    throw new SafetensorsFormatError(
      `${source}: truncated: header says ${headerJson.length} header bytes, file has ${fileSize}`,
      source,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerJson));
  } catch (e) {
    throw new SafetensorsFormatError(
      `${source}: header is not valid UTF-8 JSON: ${(e as Error).message}`,
      source,
    );
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new SafetensorsFormatError(`${source}: header is not a JSON object`, source);
  }
  const dataLength = fileSize - dataStart;
  const metadata: Record<string, string> = {};
  const entries: TensorEntry[] = [];
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
        throw new SafetensorsFormatError(`${source}: __metadata__ is not an object`, source);
      }
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== "string") {
          throw new SafetensorsFormatError(
            `${source}: __metadata__.${k} is not a string`,
            source,
          );
        }
        metadata[k] = v;
      }
      continue;
    }
    const bad = (why: string) =>
      new SafetensorsFormatError(`${source}: tensor "${name}": ${why}`, source, name);
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw bad("not an object");
    const { dtype, shape, data_offsets } = raw as Record<string, unknown>;
    if (typeof dtype !== "string" || !(dtype in DTYPE_SIZE)) {
      throw bad(`unknown dtype ${JSON.stringify(dtype)}`);
    }
    if (
      !Array.isArray(shape) ||
      !shape.every((d) => typeof d === "number" && Number.isInteger(d) && d >= 0)
    ) {
      throw bad(`invalid shape ${JSON.stringify(shape)}`);
    }
    if (
      !Array.isArray(data_offsets) || data_offsets.length !== 2 ||
      !data_offsets.every((o) => typeof o === "number" && Number.isSafeInteger(o) && o >= 0)
    ) {
      throw bad(`invalid data_offsets ${JSON.stringify(data_offsets)}`);
    }
    const [begin, end] = data_offsets as number[];
    if (end < begin) throw bad(`data_offsets [${begin}, ${end}] end before begin`);
    const want = numel(shape as number[]) * DTYPE_SIZE[dtype];
    if (end - begin !== want) {
      throw bad(
        `data_offsets [${begin}, ${end}] hold ${end - begin} bytes, but ${dtype} ` +
          `${fmtShape(shape as number[])} needs ${want}`,
      );
    }
    if (end > dataLength) {
      throw new SafetensorsFormatError(
        `${source}: truncated or out of range: tensor "${name}" ends at data byte ${end}, ` +
          `the data section has ${dataLength} bytes`,
        source,
        name,
      );
    }
    entries.push({ name, dtype, shape: (shape as number[]).slice(), begin, end });
  }
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const e of entries) {
    if (e.begin < at) {
      throw new SafetensorsFormatError(
        `${source}: tensor "${e.name}" [${e.begin}, ${e.end}) overlaps the tensor before it`,
        source,
        e.name,
      );
    }
    if (e.begin > at) {
      throw new SafetensorsFormatError(
        `${source}: gap before tensor "${e.name}" (bytes ${at}..${e.begin} belong to no tensor)`,
        source,
        e.name,
      );
    }
    at = e.end;
  }
  if (at !== dataLength) {
    throw new SafetensorsFormatError(
      `${source}: ${dataLength - at} trailing bytes after the last tensor`,
      source,
    );
  }
  return { entries, metadata, dataStart, dataLength };
}

function readHeaderLength(first8: Uint8Array, fileSize: number, source: string): number {
  if (fileSize < 8 || first8.length < 8) {
    throw new SafetensorsFormatError(
      `${source}: truncated: ${fileSize} bytes, not even a header length`,
      source,
    );
  }
  const n = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsFormatError(
      `${source}: header length ${n} is larger than ${MAX_HEADER_BYTES} (not a safetensors file?)`,
      source,
    );
  }
  const len = Number(n);
  if (8 + len > fileSize) {
    throw new SafetensorsFormatError(
      `${source}: truncated: header length ${len} but the file has ${fileSize} bytes`,
      source,
    );
  }
  return len;
}

/** Decodes one tensor's raw little-endian bytes into f32 values. */
function decode(
  bytes: Uint8Array,
  entry: TensorEntry,
  source: string,
): Float32Array {
  const n = numel(entry.shape);
  const out = new Float32Array(n);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (entry.dtype) {
    case "F32":
      if (LITTLE_ENDIAN) {
        new Uint8Array(out.buffer).set(bytes);
      } else {
        for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
      }
      return out;
    case "F16":
      for (let i = 0; i < n; i++) out[i] = f16BitsToNumber(view.getUint16(2 * i, true));
      return out;
    case "BF16": {
      // bf16 is the top half of an f32: shifting its bits up gives the exact f32 (both views of
      // `out` use the platform's byte order, so this holds on any endianness).
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) bits[i] = view.getUint16(2 * i, true) << 16;
      return out;
    }
    default:
      throw new UnsupportedDtypeError(
        `${source}: tensor "${entry.name}" has dtype ${entry.dtype}; only F32, F16 and BF16 ` +
          `can be read as f32`,
        source,
        entry.name,
        entry.dtype,
      );
  }
}

/** Parses a whole safetensors file held in memory. */
export function parseSafetensors(
  bytes: Uint8Array,
  options: ReadOptions = {},
  source = "<bytes>",
): SafetensorsContents {
  const len = readHeaderLength(bytes.subarray(0, 8), bytes.length, source);
  const header = parseHeader(bytes.subarray(8, 8 + len), bytes.length, source);
  const out: SafetensorsContents = {
    tensors: new Map(),
    dtypes: new Map(),
    metadata: header.metadata,
  };
  for (const e of header.entries) {
    out.dtypes.set(e.name, e.dtype);
    if (options.names && !options.names.has(e.name)) continue;
    const raw = bytes.subarray(header.dataStart + e.begin, header.dataStart + e.end);
    out.tensors.set(e.name, { shape: e.shape, data: decode(raw, e, source) });
  }
  return out;
}

async function readFully(file: Deno.FsFile, buf: Uint8Array, source: string): Promise<void> {
  let at = 0;
  while (at < buf.length) {
    const n = await file.read(buf.subarray(at));
    if (n === null) {
      throw new SafetensorsFormatError(`${source}: truncated while reading`, source);
    }
    at += n;
  }
}

async function openFile(path: string | URL): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (e) {
    throw new SafetensorsError(`cannot open ${path}: ${(e as Error).message}`, String(path));
  }
}

async function readHeaderFrom(file: Deno.FsFile, source: string): Promise<SafetensorsHeader> {
  const size = (await file.stat()).size;
  const first8 = new Uint8Array(Math.min(8, size));
  await readFully(file, first8, source);
  const len = readHeaderLength(first8, size, source);
  const headerBytes = new Uint8Array(len);
  await readFully(file, headerBytes, source);
  return parseHeader(headerBytes, size, source);
}

/**
 * Reads and checks only the header of a safetensors file (every entry's dtype, shape and offsets
 * against the file's size, so a truncated file is found without reading its data).
 */
export async function readSafetensorsHeader(path: string | URL): Promise<SafetensorsHeader> {
  const file = await openFile(path);
  try {
    return await readHeaderFrom(file, String(path));
  } finally {
    file.close();
  }
}

/**
 * Reads a safetensors file tensor by tensor (never the whole file in one buffer, so shards of
 * several GB load with only the decoded tensors in memory).
 */
export async function readSafetensors(
  path: string | URL,
  options: ReadOptions = {},
): Promise<SafetensorsContents> {
  const source = String(path);
  const file = await openFile(path);
  try {
    const header = await readHeaderFrom(file, source);
    const out: SafetensorsContents = {
      tensors: new Map(),
      dtypes: new Map(),
      metadata: header.metadata,
    };
    for (const e of header.entries) {
      out.dtypes.set(e.name, e.dtype);
      if (options.names && !options.names.has(e.name)) continue;
      if (!READABLE.has(e.dtype)) decode(new Uint8Array(0), e, source); // throws the typed error
      const raw = new Uint8Array(e.end - e.begin);
      await file.seek(header.dataStart + e.begin, Deno.SeekMode.Start);
      await readFully(file, raw, source);
      out.tensors.set(e.name, { shape: e.shape, data: decode(raw, e, source) });
    }
    return out;
  } finally {
    file.close();
  }
}

function checkTensor(name: string, t: HostTensor): void {
  if (name === "" || name === "__metadata__") {
    throw new SafetensorsError(`invalid tensor name ${JSON.stringify(name)}`, "<write>", name);
  }
  if (!t.shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new SafetensorsError(
      `tensor "${name}": invalid shape ${fmtShape(t.shape)}`,
      "<write>",
      name,
    );
  }
  if (!(t.data instanceof Float32Array) || t.data.length !== numel(t.shape)) {
    throw new SafetensorsError(
      `tensor "${name}": shape ${fmtShape(t.shape)} needs ${numel(t.shape)} f32 values, ` +
        `data has ${t.data?.length}`,
      "<write>",
      name,
    );
  }
}

/** Tensors to write, by name. */
export type TensorMap = ReadonlyMap<string, HostTensor> | Readonly<Record<string, HostTensor>>;

/** The dtype to write: one for every tensor, or one per tensor name (F32 for names absent). */
export type WriteDtypes = FloatDtype | ReadonlyMap<string, FloatDtype>;

interface Planned {
  name: string;
  tensor: HostTensor;
  dtype: FloatDtype;
  bytes: number;
}

/**
 * The tensors in file order: wider dtypes first, then by name (as the reference implementation
 * orders them, so that every tensor's data starts aligned to its element size).
 */
function planTensors(tensors: TensorMap, dtypes: WriteDtypes): Planned[] {
  const list = tensors instanceof Map
    ? [...tensors.entries()]
    : Object.entries(tensors as Record<string, HostTensor>);
  const planned = list.map(([name, tensor]) => {
    checkTensor(name, tensor);
    const dtype = typeof dtypes === "string" ? dtypes : dtypes.get(name) ?? "F32";
    return { name, tensor, dtype, bytes: tensor.data.length * FLOAT_DTYPE_BYTES[dtype] };
  });
  return planned.sort((a, b) =>
    FLOAT_DTYPE_BYTES[b.dtype] - FLOAT_DTYPE_BYTES[a.dtype] ||
    (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  );
}

/**
 * The header bytes (length prefix included). The JSON is padded with spaces to a multiple of 8
 * bytes, as Hugging Face does, so the data section starts aligned.
 */
function encodeHeader(list: Planned[], metadata: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let at = 0;
  for (const p of list) {
    header[p.name] = {
      dtype: p.dtype,
      shape: p.tensor.shape,
      data_offsets: [at, at + p.bytes],
    };
    at += p.bytes;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

/** The default metadata, what PyTorch-side loaders expect. */
const PT_METADATA = { format: "pt" } as const;

/** A whole safetensors file in memory (F32 unless `dtypes` says otherwise). */
export function serializeSafetensors(
  tensors: TensorMap,
  metadata: Record<string, string> = PT_METADATA,
  dtypes: WriteDtypes = "F32",
): Uint8Array {
  const list = planTensors(tensors, dtypes);
  const head = encodeHeader(list, metadata);
  const out = new Uint8Array(head.length + list.reduce((n, p) => n + p.bytes, 0));
  out.set(head);
  let at = head.length;
  for (const p of list) {
    out.set(encodeFloats(p.tensor.data, p.dtype), at);
    at += p.bytes;
  }
  return out;
}

/** Writes bytes produced piece by piece to `path` atomically: a temporary file, then a rename. */
async function writeAtomically(path: string | URL, pieces: Iterable<Uint8Array>): Promise<void> {
  const target = String(path instanceof URL ? decodeURIComponent(path.pathname) : path);
  const tmp = `${target}.tmp-${Deno.pid}-${crypto.randomUUID()}`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    try {
      for (const piece of pieces) {
        let at = 0;
        while (at < piece.length) at += await file.write(piece.subarray(at));
      }
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, target);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/**
 * Writes tensors (F32 unless `dtypes` says otherwise; 16-bit dtypes rounded to nearest, ties to
 * even) with `__metadata__ {"format": "pt"}`, atomically. Each tensor is encoded only as it is
 * written, so a 16-bit file needs no second copy of the whole model.
 */
export async function writeSafetensors(
  path: string | URL,
  tensors: TensorMap,
  metadata: Record<string, string> = PT_METADATA,
  dtypes: WriteDtypes = "F32",
): Promise<void> {
  const list = planTensors(tensors, dtypes);
  const head = encodeHeader(list, metadata);
  function* pieces(): Generator<Uint8Array> {
    yield head;
    for (const p of list) yield encodeFloats(p.tensor.data, p.dtype);
  }
  await writeAtomically(path, pieces());
}

function joinPath(dir: string | URL, name: string): string | URL {
  if (dir instanceof URL) return new URL(name, dir.href.endsWith("/") ? dir : `${dir.href}/`);
  return `${dir.replace(/\/+$/, "")}/${name}`;
}

async function exists(path: string | URL): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * Checks that every tensor the config expects is present with the right shape (extra tensors,
 * e.g. a redundant `lm_head.weight` next to tied embeddings, are allowed and ignored).
 */
export function checkModelTensors(
  config: LlamaConfig,
  tensors: ReadonlyMap<string, { shape: number[] }>,
  source: string,
): void {
  for (const spec of expectedTensors(config)) {
    const t = tensors.get(spec.name);
    if (!t) {
      throw new MissingTensorError(
        `${source}: missing tensor "${spec.name}" (expected shape ${fmtShape(spec.shape)})`,
        source,
        spec.name,
      );
    }
    checkShape(spec.name, spec.shape, t.shape, source);
  }
}

function checkShape(name: string, want: number[], got: number[], source: string): void {
  if (got.length !== want.length || got.some((d, i) => d !== want[i])) {
    throw new TensorShapeError(
      `${source}: tensor "${name}" has shape ${fmtShape(got)}, the config implies ` +
        fmtShape(want),
      source,
      name,
      want,
      got,
    );
  }
}

/** The single-file weights of a model folder. */
export const SINGLE_FILE = "model.safetensors";
/** The index of a sharded model folder. */
export const INDEX_FILE = "model.safetensors.index.json";
/** A shard's name as Hugging Face writes it: `model-00001-of-00003.safetensors`. */
export const SHARD_NAME: RegExp = /^model-\d{5}-of-\d{5}\.safetensors$/;

/** The name of shard `i` (from 1) of `n`. */
export function shardName(i: number, n: number): string {
  const p = (k: number) => String(k).padStart(5, "0");
  return `model-${p(i)}-of-${p(n)}.safetensors`;
}

/**
 * Files beside the weights that a written folder carries over from its source when present: the
 * tokenizer (fast and sentencepiece), its settings and chat template, and the generation defaults.
 */
export const COMPANION_FILES: readonly string[] = [
  "tokenizer.json",
  "tokenizer.model",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
  "chat_template.json",
  "generation_config.json",
];

/** Where a model folder's weights came from, for writing the result the same way. */
export interface ModelSource {
  /** The folder. */
  dir: string | URL;
  /** Its config.json as written, every field (also those this project does not use). */
  configJson: Record<string, unknown>;
  /** The stored dtype of each tensor the config needs (F32, F16 or BF16). */
  dtypes: Map<string, FloatDtype>;
  /** Whether the weights are sharded (`model.safetensors.index.json`). */
  sharded: boolean;
}

/** What {@link inspectModelFolder} finds: the config, and where each needed tensor is. */
export interface ModelFolderLayout {
  config: LlamaConfig;
  source: ModelSource;
  /** Each file to read, with the needed tensors it holds (in model order of first use). */
  files: { path: string | URL; names: Set<string> }[];
}

/** A model folder's config and weights (f32, Hugging Face names), and where they came from. */
export interface ModelFolder {
  config: LlamaConfig;
  tensors: Map<string, HostTensor>;
  source: ModelSource;
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/** The index's `weight_map`: tensor name → shard file name. */
async function readIndex(index: string | URL): Promise<Map<string, string>> {
  const source = String(index);
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(index));
  } catch (e) {
    throw new SafetensorsFormatError(
      `${source}: unreadable index: ${(e as Error).message}`,
      source,
    );
  }
  const map = isObject(json) ? json.weight_map : undefined;
  if (!isObject(map)) {
    throw new SafetensorsFormatError(`${source}: no "weight_map" object`, source);
  }
  const out = new Map<string, string>();
  for (const [name, file] of Object.entries(map)) {
    if (
      typeof file !== "string" || file === "" || file.includes("/") || file.includes("\\") ||
      file === "." || file === ".."
    ) {
      throw new SafetensorsFormatError(
        `${source}: weight_map["${name}"] is not a file name in the folder`,
        source,
        name,
      );
    }
    out.set(name, file);
  }
  return out;
}

/**
 * Reads `config.json` and the headers of the weights (never their data) and checks everything
 * that can be checked from them: with an index, that every shard it names exists and holds
 * exactly the tensors the index puts there; that every tensor the config needs is present, in a
 * dtype we read (F32, F16, BF16), with the shape the config implies; and that no file is
 * truncated. Each problem is a typed error naming the file and the tensor.
 */
export async function inspectModelFolder(dir: string | URL): Promise<ModelFolderLayout> {
  const configPath = joinPath(dir, "config.json");
  const config = await readLlamaConfig(configPath);
  const configJson = JSON.parse(await Deno.readTextFile(configPath)) as Record<string, unknown>;
  const single = joinPath(dir, SINGLE_FILE);
  const index = joinPath(dir, INDEX_FILE);
  /** Each tensor present: the file holding it and its entry. */
  const where = new Map<string, { path: string | URL; entry: TensorEntry }>();
  let sharded: boolean;
  let source: string;
  if (await exists(single)) {
    sharded = false;
    source = String(single);
    for (const entry of (await readSafetensorsHeader(single)).entries) {
      where.set(entry.name, { path: single, entry });
    }
  } else if (await exists(index)) {
    sharded = true;
    source = String(index);
    const weightMap = await readIndex(index);
    const byFile = new Map<string, string[]>();
    for (const [name, file] of weightMap) {
      if (!byFile.has(file)) byFile.set(file, []);
      byFile.get(file)!.push(name);
    }
    for (const [file, names] of byFile) {
      const path = joinPath(dir, file);
      if (!(await exists(path))) {
        const more = names.length > 1 ? ` and ${names.length - 1} more` : "";
        throw new MissingShardError(
          `${path}: no such shard; ${INDEX_FILE} puts "${names[0]}"${more} in it`,
          String(path),
          names[0],
        );
      }
      const header = await readSafetensorsHeader(path);
      const held = new Set(header.entries.map((e) => e.name));
      for (const name of names) {
        if (!held.has(name)) {
          throw new ShardIndexError(
            `${path}: no tensor "${name}" in this shard, but ${INDEX_FILE} puts it here`,
            String(path),
            name,
          );
        }
      }
      for (const entry of header.entries) {
        const listed = weightMap.get(entry.name);
        if (listed !== file) {
          throw new ShardIndexError(
            `${path}: tensor "${entry.name}" is in this shard, but ${INDEX_FILE} ` +
              (listed === undefined ? "does not list it" : `puts it in ${listed}`),
            String(path),
            entry.name,
          );
        }
        where.set(entry.name, { path, entry });
      }
    }
  } else {
    throw new SafetensorsError(`${dir}: no ${SINGLE_FILE} or ${INDEX_FILE}`, String(dir));
  }
  // A checkpoint that contradicts its config is refused by the field to blame (a bias the config
  // switches off, q/k shapes of another head_dim), before the generic shape check below.
  checkConfigAgainstTensors(
    config,
    new Map([...where].map(([name, at]) => [name, { shape: at.entry.shape }])),
    source,
  );
  const dtypes = new Map<string, FloatDtype>();
  const files = new Map<string, { path: string | URL; names: Set<string> }>();
  for (const spec of expectedTensors(config)) {
    const at = where.get(spec.name);
    if (!at) {
      throw new MissingTensorError(
        `${source}: missing tensor "${spec.name}" (expected shape ${fmtShape(spec.shape)})`,
        source,
        spec.name,
      );
    }
    const file = String(at.path);
    if (!READABLE.has(at.entry.dtype)) {
      throw new UnsupportedDtypeError(
        `${file}: tensor "${spec.name}" has dtype ${at.entry.dtype}; only F32, F16 and BF16 ` +
          `can be read`,
        file,
        spec.name,
        at.entry.dtype,
      );
    }
    checkShape(spec.name, spec.shape, at.entry.shape, file);
    dtypes.set(spec.name, at.entry.dtype as FloatDtype);
    if (!files.has(file)) files.set(file, { path: at.path, names: new Set() });
    files.get(file)!.names.add(spec.name);
  }
  return {
    config,
    source: { dir, configJson, dtypes, sharded },
    files: [...files.values()],
  };
}

/**
 * Loads `config.json` plus `model.safetensors`, or the shards listed by
 * `model.safetensors.index.json`, decoding only the tensors the config needs, after
 * {@link inspectModelFolder}'s checks.
 */
export async function loadModelFolder(dir: string | URL): Promise<ModelFolder> {
  const layout = await inspectModelFolder(dir);
  const tensors = new Map<string, HostTensor>();
  for (const { path, names } of layout.files) {
    const got = (await readSafetensors(path, { names })).tensors;
    for (const name of names) {
      const t = got.get(name);
      // The file changed since its header was read.
      if (!t) throw new MissingTensorError(`${path}: missing tensor "${name}"`, String(path), name);
      tensors.set(name, t);
    }
  }
  // In model order, as the config lists the tensors.
  const ordered = new Map<string, HostTensor>();
  for (const spec of expectedTensors(layout.config)) {
    ordered.set(spec.name, tensors.get(spec.name)!);
  }
  return { config: layout.config, tensors: ordered, source: layout.source };
}

/** Hugging Face's default `max_shard_size` of `save_pretrained`: 5 GB. */
export const DEFAULT_MAX_SHARD_BYTES = 5_000_000_000;

/** How {@link saveModelFolder} writes. */
export interface SaveModelOptions {
  /**
   * The folder the weights came from: its config.json fields, its tensors' dtypes, its sharding
   * and its companion files ({@link COMPANION_FILES}) are carried over.
   */
  source?: ModelSource | null;
  /** One dtype for every tensor; default: each tensor's dtype in `source`, else F32. */
  dtype?: FloatDtype | null;
  /**
   * Largest shard in bytes of tensor data; the weights are sharded when they exceed it. Default:
   * {@link DEFAULT_MAX_SHARD_BYTES} when `source` was sharded, else one file whatever its size.
   */
  maxShardBytes?: number | null;
}

/** What {@link saveModelFolder} wrote. */
export interface SavedModel {
  /** The weight files, in order (one `model.safetensors`, or the shards). */
  files: string[];
  /** The `torch_dtype` written into config.json. */
  torchDtype: string;
  /** Bytes of tensor data (`metadata.total_size` of a sharded folder's index). */
  totalBytes: number;
}

/**
 * Hugging Face's split (huggingface_hub's `split_state_dict_into_shards`): tensors in model
 * order fill a shard until the next would take it over the limit; a tensor larger than the limit
 * gets a shard of its own.
 */
function splitShards(items: { name: string; bytes: number }[], max: number): string[][] {
  const shards: string[][] = [];
  let current: string[] = [];
  let size = 0;
  for (const it of items) {
    if (it.bytes > max) {
      shards.push([it.name]);
      continue;
    }
    if (size + it.bytes > max && current.length > 0) {
      shards.push(current);
      current = [];
      size = 0;
    }
    current.push(it.name);
    size += it.bytes;
  }
  if (current.length > 0) shards.push(current);
  return shards;
}

function sortedKeys(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.keys(o).sort().map((k) => [k, o[k]]));
}

/** The same model hyper-parameters: what `parseLlamaConfig` makes of both is equal. */
function sameConfig(a: LlamaConfig, b: LlamaConfig): boolean {
  return JSON.stringify(sortedKeys({ ...a })) === JSON.stringify(sortedKeys({ ...b }));
}

/**
 * The config.json to write: the source's, every field kept, with `torch_dtype` (and `dtype`,
 * the newer name, where the source has it) set to what is written; `architectures` and
 * `model_type` are added where the source lacks them. Without a source (or one describing
 * another model), the config as this project writes it.
 */
function configJsonFor(
  config: LlamaConfig,
  source: ModelSource | null,
  torchDtype: string,
): Record<string, unknown> {
  let json: Record<string, unknown>;
  if (source && sameConfig(parseLlamaConfig(source.configJson), config)) {
    json = { ...source.configJson };
    json.architectures ??= ["LlamaForCausalLM"];
    json.model_type ??= "llama";
    if ("dtype" in json) json.dtype = torchDtype;
  } else {
    json = llamaConfigToJson(config);
  }
  json.torch_dtype = torchDtype;
  parseLlamaConfig(json); // a bad in-memory config never reaches disk
  return json;
}

async function writeJsonFile(path: string, json: unknown, indent: number): Promise<void> {
  await writeAtomically(path, [
    new TextEncoder().encode(JSON.stringify(json, null, indent) + "\n"),
  ]);
}

async function removeIfPresent(path: string): Promise<void> {
  await Deno.remove(path).catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  });
}

/**
 * Writes a model folder as Hugging Face's `save_pretrained` does: only the tensors the config
 * expects (a tied model never carries `lm_head.weight`), in each tensor's source dtype (or
 * `dtype`), as one `model.safetensors` or as shards with `model.safetensors.index.json`
 * (`metadata.total_size`, `weight_map`), then `config.json` and the source's companion files.
 * Every file is written atomically; weight files of the other layout left in `dir` by an earlier
 * save are removed, so that loaders never pick up stale weights.
 */
export async function saveModelFolder(
  dir: string,
  config: LlamaConfig,
  tensors: ReadonlyMap<string, HostTensor>,
  options: SaveModelOptions = {},
): Promise<SavedModel> {
  checkModelTensors(config, tensors, "<save>");
  const source = options.source ?? null;
  const out = dir.replace(/\/+$/, "");
  await Deno.mkdir(out, { recursive: true });
  const items = expectedTensors(config).map((spec) => {
    const t = tensors.get(spec.name)!;
    const dtype: FloatDtype = options.dtype ?? source?.dtypes.get(spec.name) ?? "F32";
    return { name: spec.name, tensor: t, dtype, bytes: t.data.length * FLOAT_DTYPE_BYTES[dtype] };
  });
  const dtypes = new Map(items.map((it) => [it.name, it.dtype]));
  const totalBytes = items.reduce((n, it) => n + it.bytes, 0);
  const max = options.maxShardBytes ??
    (source?.sharded ? DEFAULT_MAX_SHARD_BYTES : Number.POSITIVE_INFINITY);
  const shards = splitShards(items, max);
  const subset = (names: string[]) => new Map(names.map((n) => [n, tensors.get(n)!]));
  let files: string[];
  const stale: string[] = [];
  for await (const e of Deno.readDir(out)) {
    if (SHARD_NAME.test(e.name) || e.name === INDEX_FILE || e.name === SINGLE_FILE) {
      stale.push(e.name);
    }
  }
  if (shards.length <= 1) {
    files = [SINGLE_FILE];
    await writeSafetensors(`${out}/${SINGLE_FILE}`, subset(shards[0] ?? []), PT_METADATA, dtypes);
  } else {
    files = shards.map((_, i) => shardName(i + 1, shards.length));
    const weightMap: Record<string, string> = {};
    for (const [i, names] of shards.entries()) {
      await writeSafetensors(`${out}/${files[i]}`, subset(names), PT_METADATA, dtypes);
      for (const n of names) weightMap[n] = files[i];
    }
    await writeJsonFile(`${out}/${INDEX_FILE}`, {
      metadata: { total_size: totalBytes },
      weight_map: sortedKeys(weightMap),
    }, 2);
  }
  const written = new Set(files.length > 1 ? [...files, INDEX_FILE] : files);
  for (const name of stale) if (!written.has(name)) await removeIfPresent(`${out}/${name}`);

  // torch_dtype: the one dtype written, or the one holding most of the weights.
  const byDtype = new Map<FloatDtype, number>();
  for (const it of items) byDtype.set(it.dtype, (byDtype.get(it.dtype) ?? 0) + it.bytes);
  const main = [...byDtype.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? "F32";
  const torchDtype = TORCH_DTYPE[main];
  await writeJsonFile(`${out}/config.json`, configJsonFor(config, source, torchDtype), 2);
  if (source) await copyCompanionFiles(source.dir, out);
  return { files, torchDtype, totalBytes };
}

/** Copies the {@link COMPANION_FILES} that `from` has into `to` (nothing when they are one). */
export async function copyCompanionFiles(from: string | URL, to: string): Promise<string[]> {
  const fromDir = from instanceof URL ? decodeURIComponent(from.pathname) : from;
  const [a, b] = await Promise.all([Deno.realPath(fromDir), Deno.realPath(to)]);
  if (a === b) return [];
  const copied: string[] = [];
  for (const f of COMPANION_FILES) {
    try {
      await Deno.copyFile(`${a}/${f}`, `${to}/${f}`);
      copied.push(f);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  return copied;
}

/**
 * One tensor read on demand, by rows: what a loader that uploads as it reads takes, so that it
 * holds one tensor (or one block of rows) on the host at a time, never all of W.
 */
export interface TensorRows {
  shape: readonly number[];
  /** The stored dtype (decoded to f32 by `rows`). */
  dtype: string;
  /** Rows [start, start + count) of the tensor (along its first dimension) as f32 values. */
  rows(start: number, count: number): Promise<Float32Array>;
}

/** Tensors read on demand (model order), and the handles to close once they have been read. */
export interface StreamedTensors {
  tensors: Map<string, TensorRows>;
  close(): void;
}

function rowRange(e: TensorEntry, start: number, count: number, source: string): [number, number] {
  const rows = e.shape.length === 0 ? 1 : e.shape[0];
  if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || start + count > rows) {
    throw new SafetensorsError(
      `${source}: rows ${start}..${start + count} of "${e.name}" (it has ${rows})`,
      source,
      e.name,
    );
  }
  const rowBytes = (e.end - e.begin) / rows;
  return [e.begin + start * rowBytes, e.begin + (start + count) * rowBytes];
}

function rowsEntry(e: TensorEntry, count: number): TensorEntry {
  return { ...e, shape: e.shape.length === 0 ? [] : [count, ...e.shape.slice(1)] };
}

/**
 * The tensors of a model folder that the config needs, read on demand from their files (after
 * {@link inspectModelFolder}'s checks): a tensor's bytes are read and decoded only when asked
 * for, one block of rows at a time if the caller wants. The same f32 values as
 * {@link loadModelFolder}.
 */
export function streamModelFolder(layout: ModelFolderLayout): StreamedTensors {
  const files = new Map<string, Promise<{ file: Deno.FsFile; header: SafetensorsHeader }>>();
  const open = (path: string | URL) => {
    const key = String(path);
    let f = files.get(key);
    if (!f) {
      f = (async () => {
        const file = await openFile(path);
        try {
          return { file, header: await readHeaderFrom(file, key) };
        } catch (e) {
          file.close();
          throw e;
        }
      })();
      files.set(key, f);
    }
    return f;
  };
  // One read at a time per file: seek + read must not interleave.
  let queue: Promise<unknown> = Promise.resolve();
  const tensors = new Map<string, TensorRows>();
  const byName = new Map<string, string | URL>();
  for (const { path, names } of layout.files) for (const n of names) byName.set(n, path);
  for (const spec of expectedTensors(layout.config)) {
    const path = byName.get(spec.name)!;
    const source = String(path);
    tensors.set(spec.name, {
      shape: spec.shape,
      dtype: layout.source.dtypes.get(spec.name)!,
      rows: (start, count) => {
        const read = queue.then(async () => {
          const { file, header } = await open(path);
          const e = header.entries.find((x) => x.name === spec.name);
          // The file changed since its header was inspected.
          if (!e) {
            throw new MissingTensorError(
              `${source}: missing tensor "${spec.name}"`,
              source,
              spec.name,
            );
          }
          checkShape(spec.name, spec.shape, e.shape, source);
          const [b, end] = rowRange(e, start, count, source);
          const raw = new Uint8Array(end - b);
          await file.seek(header.dataStart + b, Deno.SeekMode.Start);
          await readFully(file, raw, source);
          return decode(raw, rowsEntry(e, count), source);
        });
        queue = read.catch(() => {});
        return read;
      },
    });
  }
  return {
    tensors,
    close: () => {
      for (const f of files.values()) f.then((x) => x.file.close(), () => {});
      files.clear();
    },
  };
}

/**
 * A safetensors file held in memory, its tensors decoded on demand (the bytes stay the caller's;
 * only the asked rows are decoded): the header's metadata and every entry readable as f32.
 */
export function streamSafetensorsBytes(
  bytes: Uint8Array,
  source = "<bytes>",
): { metadata: Record<string, string>; tensors: Map<string, TensorRows> } {
  const len = readHeaderLength(bytes.subarray(0, 8), bytes.length, source);
  const header = parseHeader(bytes.subarray(8, 8 + len), bytes.length, source);
  const tensors = new Map<string, TensorRows>();
  for (const e of header.entries) {
    tensors.set(e.name, {
      shape: e.shape,
      dtype: e.dtype,
      // deno-lint-ignore require-await
      rows: async (start, count) => {
        const [b, end] = rowRange(e, start, count, source);
        const raw = bytes.subarray(header.dataStart + b, header.dataStart + end);
        return decode(raw, rowsEntry(e, count), source);
      },
    });
  }
  return { metadata: header.metadata, tensors };
}

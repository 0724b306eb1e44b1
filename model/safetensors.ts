/**
 * The `safetensors` format as Hugging Face writes it: an 8-byte little-endian header length, a
 * JSON header (`name -> {dtype, shape, data_offsets}` plus `__metadata__`), then the raw
 * little-endian tensor bytes, contiguous and in offset order. We read F32, F16 and BF16 into f32
 * and write F32; model folders (`config.json` + `model.safetensors`, or a sharded index) are
 * checked tensor by tensor against what the config expects.
 */

import { DomainError } from "../core/errors.ts";
import { z } from "zod";
import {
  checkConfigAgainstTensors,
  checkpointTensorNames,
  expectedTensors,
  type LlamaConfig,
  readLlamaConfig,
  writeLlamaConfig,
} from "./config.ts";

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

/** IEEE half-precision bits to a number (subnormals, infinities and NaN included). */
export function f16BitsToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1024 + frac) * 2 ** (exp - 25);
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

/**
 * Reads a safetensors file tensor by tensor (never the whole file in one buffer, so shards of
 * several GB load with only the decoded tensors in memory).
 */
export async function readSafetensors(
  path: string | URL,
  options: ReadOptions = {},
): Promise<SafetensorsContents> {
  const source = String(path);
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw new SafetensorsError(`cannot open ${source}: ${(e as Error).message}`, source);
  }
  try {
    const size = (await file.stat()).size;
    const first8 = new Uint8Array(Math.min(8, size));
    await readFully(file, first8, source);
    const len = readHeaderLength(first8, size, source);
    const headerBytes = new Uint8Array(len);
    await readFully(file, headerBytes, source);
    const header = parseHeader(headerBytes, size, source);
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

function sortedEntries(tensors: TensorMap): [string, HostTensor][] {
  const list = tensors instanceof Map
    ? [...tensors.entries()]
    : Object.entries(tensors as Record<string, HostTensor>);
  for (const [name, t] of list) checkTensor(name, t);
  return list.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/**
 * The header bytes (length prefix included) for F32 tensors written in name order. The JSON is
 * padded with spaces to a multiple of 8 bytes, as Hugging Face does, so the data section starts
 * aligned.
 */
function encodeHeader(
  list: [string, HostTensor][],
  metadata: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let at = 0;
  for (const [name, t] of list) {
    const bytes = t.data.length * 4;
    header[name] = { dtype: "F32", shape: t.shape, data_offsets: [at, at + bytes] };
    at += bytes;
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

function f32Bytes(data: Float32Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint8Array(data.length * 4);
  const v = new DataView(out.buffer);
  for (let i = 0; i < data.length; i++) v.setFloat32(4 * i, data[i], true);
  return out;
}

/** The default metadata, what PyTorch-side loaders expect. */
const PT_METADATA = { format: "pt" } as const;

/** A whole F32 safetensors file in memory. */
export function serializeSafetensors(
  tensors: TensorMap,
  metadata: Record<string, string> = PT_METADATA,
): Uint8Array {
  const list = sortedEntries(tensors);
  const head = encodeHeader(list, metadata);
  let total = head.length;
  for (const [, t] of list) total += t.data.length * 4;
  const out = new Uint8Array(total);
  out.set(head);
  let at = head.length;
  for (const [, t] of list) {
    out.set(f32Bytes(t.data), at);
    at += t.data.length * 4;
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

/** Writes F32 tensors (sorted by name) with `__metadata__ {"format": "pt"}`, atomically. */
export async function writeSafetensors(
  path: string | URL,
  tensors: TensorMap,
  metadata: Record<string, string> = PT_METADATA,
): Promise<void> {
  const list = sortedEntries(tensors);
  const head = encodeHeader(list, metadata);
  await writeAtomically(path, [head, ...list.map(([, t]) => f32Bytes(t.data))]);
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
  tensors: ReadonlyMap<string, HostTensor>,
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
    if (t.shape.length !== spec.shape.length || t.shape.some((d, i) => d !== spec.shape[i])) {
      throw new TensorShapeError(
        `${source}: tensor "${spec.name}" has shape ${fmtShape(t.shape)}, the config implies ` +
          fmtShape(spec.shape),
        source,
        spec.name,
        spec.shape,
        t.shape,
      );
    }
  }
}

/** A model folder's config and weights (f32, Hugging Face names). */
export interface ModelFolder {
  config: LlamaConfig;
  tensors: Map<string, HostTensor>;
}

/**
 * Loads `config.json` plus `model.safetensors`, or the shards listed by
 * `model.safetensors.index.json`, decoding only the tensors the config needs and checking each.
 */
export async function loadModelFolder(dir: string | URL): Promise<ModelFolder> {
  const config = await readLlamaConfig(joinPath(dir, "config.json"));
  // Biases the config switches off are read too when present, to refuse the contradiction.
  const wanted = checkpointTensorNames(config);
  const single = joinPath(dir, "model.safetensors");
  const index = joinPath(dir, "model.safetensors.index.json");
  let tensors: Map<string, HostTensor>;
  let source: string;
  if (await exists(single)) {
    source = String(single);
    tensors = (await readSafetensors(single, { names: wanted })).tensors;
  } else if (await exists(index)) {
    source = String(index);
    tensors = await readSharded(dir, index, wanted);
  } else {
    throw new SafetensorsError(
      `${dir}: no model.safetensors or model.safetensors.index.json`,
      String(dir),
    );
  }
  checkConfigAgainstTensors(config, tensors, source);
  checkModelTensors(config, tensors, source);
  return { config, tensors };
}

async function readSharded(
  dir: string | URL,
  index: string | URL,
  wanted: ReadonlySet<string>,
): Promise<Map<string, HostTensor>> {
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
  const map = (json as { weight_map?: unknown })?.weight_map;
  if (typeof map !== "object" || map === null || Array.isArray(map)) {
    throw new SafetensorsFormatError(`${source}: no "weight_map" object`, source);
  }
  const byFile = new Map<string, Set<string>>();
  for (const [name, file] of Object.entries(map as Record<string, unknown>)) {
    if (typeof file !== "string" || file.includes("/") || file.includes("\\")) {
      throw new SafetensorsFormatError(
        `${source}: weight_map["${name}"] is not a file name in the folder`,
        source,
        name,
      );
    }
    if (!wanted.has(name)) continue;
    if (!byFile.has(file)) byFile.set(file, new Set());
    byFile.get(file)!.add(name);
  }
  const tensors = new Map<string, HostTensor>();
  for (const [file, names] of byFile) {
    const path = joinPath(dir, file);
    const got = (await readSafetensors(path, { names })).tensors;
    for (const name of names) {
      const t = got.get(name);
      if (!t) {
        throw new MissingTensorError(
          `${path}: missing tensor "${name}" (the index puts it in this shard)`,
          String(path),
          name,
        );
      }
      tensors.set(name, t);
    }
  }
  return tensors;
}

/**
 * Writes `config.json` and `model.safetensors` (F32, only the tensors the config expects, so a
 * tied model never carries `lm_head.weight`), each atomically.
 */
export async function saveModelFolder(
  dir: string,
  config: LlamaConfig,
  tensors: ReadonlyMap<string, HostTensor>,
): Promise<void> {
  checkModelTensors(config, tensors, "<save>");
  await Deno.mkdir(dir, { recursive: true });
  const subset = new Map<string, HostTensor>();
  for (const spec of expectedTensors(config)) subset.set(spec.name, tensors.get(spec.name)!);
  await writeSafetensors(`${dir.replace(/\/+$/, "")}/model.safetensors`, subset);
  await writeLlamaConfig(`${dir.replace(/\/+$/, "")}/config.json`, config);
}

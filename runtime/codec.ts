/**
 * Binary frames: one message = routing metadata + a value whose typed arrays travel as raw bytes.
 *
 * Layout (all integers little-endian):
 *
 * ```
 *  0  u32  magic "AFR1"
 *  4  u32  header length H
 *  8  u32  checksum of the header bytes
 * 12  u32  reserved (0)
 * 16  H bytes of UTF-8 JSON: [meta, value?, tensors?] (no value: undefined)
 *     zero padding to a multiple of 8
 *     tensor bytes, each block 8-aligned, at the offsets the header lists (counted from the
 *     end of the padding)
 * ```
 *
 * In the JSON `value`, each tensor is replaced by `null`; `tensors` lists for each one its name
 * (its path in the value, dotted), path, dtype, shape, byte offset and checksum. Tensors are
 * never written as JSON arrays of numbers. Decoding checks every length, bound and checksum and
 * throws {@link FrameError} on anything inconsistent, so a corrupt or truncated frame is never
 * half-read.
 * @module
 */
import { checksum32 } from "./checksum.ts";
import { EncodeError, FrameError } from "./errors.ts";
import {
  type DType,
  DTYPE_BYTES,
  dtypeOf,
  shapeOf,
  type TensorArray,
  viewAs,
  withShape,
} from "./tensor.ts";

/** Marks a binary frame ("AFR1"). */
export const FRAME_MAGIC = 0x31524641;
const PREFIX = 16;

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("the actor runtime needs a little-endian host (tensors travel little-endian)");
}

/** Header entry of one tensor. */
export interface TensorHeader {
  /** Dotted path of the tensor in the value, e.g. `delta.0.a`. */
  n: string;
  /** Path of the tensor in the value. */
  p: (string | number)[];
  d: DType;
  s: number[];
  /** Byte offset from the start of the tensor region (after the padded header). */
  o: number;
  /** Checksum of the tensor bytes. */
  c: number;
}

/** Routing metadata of a frame (small, JSON). */
export type Meta = Record<string, unknown>;

/** A decoded frame. */
export interface Decoded {
  meta: Meta;
  value: unknown;
  /** Descriptions of the tensors the value carried. */
  tensors: readonly TensorHeader[];
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });
const FORBIDDEN_KEYS = new Set(["__proto__", "constructor", "prototype"]);

function isPlainContainer(v: unknown): v is Record<string, unknown> | unknown[] {
  if (typeof v !== "object" || v === null) return false;
  if (Array.isArray(v)) return true;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

const MAX_DEPTH = 256;

function tooDeep(): never {
  throw new EncodeError(`value is nested deeper than ${MAX_DEPTH} levels (or cyclic)`);
}

function hasTensor(v: unknown, depth = 0): boolean {
  if (typeof v !== "object" || v === null) return false;
  if (ArrayBuffer.isView(v)) return true;
  if (!isPlainContainer(v)) return false;
  if (depth > MAX_DEPTH) tooDeep();
  if (Array.isArray(v)) {
    for (const x of v) if (hasTensor(x, depth + 1)) return true;
    return false;
  }
  for (const k in v) if (hasTensor(v[k], depth + 1)) return true;
  return false;
}

interface Pending {
  header: TensorHeader;
  array: TensorArray;
}

function extract(v: unknown, path: (string | number)[], out: Pending[]): unknown {
  if (typeof v !== "object" || v === null) return v;
  if (ArrayBuffer.isView(v)) {
    const dtype = dtypeOf(v);
    if (!dtype) {
      throw new EncodeError(
        `${v.constructor.name} at ${path.join(".") || "(root)"} cannot travel as a tensor ` +
          `(supported: Float32Array, Int32Array, Uint8Array)`,
      );
    }
    const array = v as TensorArray;
    out.push({
      header: { n: path.join("."), p: [...path], d: dtype, s: [...shapeOf(array)], o: 0, c: 0 },
      array,
    });
    return null;
  }
  if (!isPlainContainer(v)) return v;
  if (Array.isArray(v)) return v.map((x, i) => extract(x, [...path, i], out));
  const o: Record<string, unknown> = {};
  for (const k in v) o[k] = extract(v[k], [...path, k], out);
  return o;
}

function json(x: unknown): string {
  try {
    return JSON.stringify(x);
  } catch (e) {
    throw new EncodeError(`value cannot be encoded: ${(e as Error).message}`);
  }
}

function bytesOf(a: TensorArray): Uint8Array {
  return a instanceof Uint8Array ? a : new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * A frame laid out but not yet written: its length, and a writer that emits its pieces at their
 * frame offsets (so a caller can write it contiguously, or straight into chunk buffers).
 */
export interface FramePlan {
  length: number;
  write(put: (bytes: Uint8Array, at: number) => void): void;
}

/** Lays out the frame of `meta` and `value` (checksums computed, nothing copied yet). */
export function planFrame(meta: Meta, value: unknown): FramePlan {
  if (hasTensor(value)) {
    const pending: Pending[] = [];
    const stripped = extract(value, [], pending);
    let off = 0;
    for (const p of pending) {
      p.header.c = checksum32(bytesOf(p.array));
      p.header.o = off;
      off = align8(off + p.array.byteLength);
    }
    const head = prefixed(encoder.encode(json([meta, stripped, pending.map((p) => p.header)])));
    const base = align8(head.byteLength);
    const last = pending[pending.length - 1];
    return {
      length: base + last.header.o + last.array.byteLength,
      write(put) {
        put(head, 0);
        for (const p of pending) put(bytesOf(p.array), base + p.header.o);
      },
    };
  }
  // A top-level undefined (a method without input) is left out: JSON would turn it into null.
  const head = prefixed(encoder.encode(json(value === undefined ? [meta] : [meta, value])));
  return { length: head.byteLength, write: (put) => put(head, 0) };
}

/** Encodes `meta` and `value` into one frame. */
export function encodeFrame(meta: Meta, value: unknown): Uint8Array {
  return writeFrame(planFrame(meta, value));
}

/** Writes a planned frame into one contiguous buffer. */
export function writeFrame(plan: FramePlan): Uint8Array {
  let out: Uint8Array | undefined;
  plan.write((bytes, at) => {
    if (at === 0 && bytes.byteLength === plan.length) out = bytes;
    else {
      out ??= new Uint8Array(plan.length);
      out.set(bytes, at);
    }
  });
  return out!;
}

function prefixed(header: Uint8Array): Uint8Array {
  const out = new Uint8Array(PREFIX + header.byteLength);
  const dv = new DataView(out.buffer, 0, PREFIX);
  dv.setUint32(0, FRAME_MAGIC, true);
  dv.setUint32(4, header.byteLength, true);
  dv.setUint32(8, checksum32(header), true);
  dv.setUint32(12, 0, true);
  out.set(header, PREFIX);
  return out;
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

/** True when `bytes` starts like a frame (used to tell frames from chunks). */
export function isFrame(bytes: Uint8Array): boolean {
  return bytes.byteLength >= 4 &&
    (bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) | (bytes[3] << 24)) === FRAME_MAGIC;
}

/** A frame's head: its prefix checked and its JSON parsed (tensor entries not yet checked). */
interface Head {
  meta: Meta;
  value: unknown;
  tensorList: unknown;
  /** Header length. */
  h: number;
}

function readHead(bytes: Uint8Array): Head {
  if (bytes.byteLength < PREFIX) {
    throw new FrameError(`frame truncated: ${bytes.byteLength} bytes, the prefix alone is 16`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dv.getUint32(0, true) !== FRAME_MAGIC) throw new FrameError("not a frame (bad magic)");
  const h = dv.getUint32(4, true);
  if (PREFIX + h > bytes.byteLength) {
    throw new FrameError(
      `frame truncated: header of ${h} bytes, ${bytes.byteLength - PREFIX} present`,
    );
  }
  const headerBytes = bytes.subarray(PREFIX, PREFIX + h);
  if (checksum32(headerBytes) !== dv.getUint32(8, true)) {
    throw new FrameError("frame header checksum mismatch (corrupt frame)");
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(decoder.decode(headerBytes));
  } catch (e) {
    throw new FrameError(`frame header is not valid JSON: ${(e as Error).message}`);
  }
  if (!Array.isArray(parsed) || parsed.length < 1 || parsed.length > 3) {
    throw new FrameError("frame header is not [meta, value?, tensors?]");
  }
  const [meta, value, tensorList] = parsed as [unknown, unknown, unknown];
  if (typeof meta !== "object" || meta === null || Array.isArray(meta)) {
    throw new FrameError("frame meta is not an object");
  }
  return { meta: meta as Meta, value, tensorList, h };
}

/**
 * Where each tensor of a frame lies, read from the frame's first bytes alone (the head part of a
 * frame that arrives in parts), so the receiver can check tensors while the rest arrives.
 * Returns undefined when those bytes do not hold the whole header.
 */
export function tensorLayout(
  head: Uint8Array,
): { offset: number; length: number; checksum: number }[] | undefined {
  if (head.byteLength < PREFIX) return undefined;
  const h = new DataView(head.buffer, head.byteOffset, PREFIX).getUint32(4, true);
  if (PREFIX + h > head.byteLength) return undefined;
  const { tensorList } = readHead(head.subarray(0, PREFIX + h));
  if (!Array.isArray(tensorList)) return [];
  const base = align8(PREFIX + h);
  return tensorList.map((t, i) => {
    const c = checkTensorHeader(t, i);
    const length = c.s.reduce((a, b) => a * b, 1) * DTYPE_BYTES[c.d];
    return { offset: base + c.o, length, checksum: c.c };
  });
}

/**
 * Decodes a frame. Tensors become typed-array views of the frame's bytes (no copy when the frame
 * is 8-aligned in memory, e.g. after reassembly; one copy otherwise). `verified` lists tensors
 * (by index) whose checksum the caller already checked while the frame arrived in parts.
 */
export function decodeFrame(bytes: Uint8Array, verified?: ReadonlySet<number>): Decoded {
  const { meta, value, tensorList, h } = readHead(bytes);
  if (tensorList === undefined) {
    if (bytes.byteLength !== PREFIX + h) {
      throw new FrameError(`frame has ${bytes.byteLength - PREFIX - h} unexpected trailing bytes`);
    }
    return { meta, value, tensors: [] };
  }
  if (!Array.isArray(tensorList) || tensorList.length === 0) {
    throw new FrameError("frame tensor list is malformed");
  }
  let frame = bytes;
  if ((bytes.byteOffset & 7) !== 0) {
    // Typed-array views need aligned offsets; one copy is cheaper than a copy per tensor.
    frame = new Uint8Array(bytes.byteLength);
    frame.set(bytes);
  }
  const headers = tensorList.map((t, i) => checkTensorHeader(t, i));
  const base = align8(PREFIX + h);
  let end = 0;
  let root = value;
  for (let ti = 0; ti < headers.length; ti++) {
    const t = headers[ti];
    const size = DTYPE_BYTES[t.d];
    const count = t.s.reduce((a, b) => a * b, 1);
    const length = count * size;
    if (t.o !== end) throw new FrameError(`tensor ${t.n}: offset ${t.o}, expected ${end}`);
    const at = base + t.o;
    if (at + length > frame.byteLength) {
      throw new FrameError(
        `frame truncated: tensor ${t.n} needs bytes ${at}..${
          at + length
        }, frame has ${frame.byteLength}`,
      );
    }
    const raw = new Uint8Array(frame.buffer, frame.byteOffset + at, length);
    if (!verified?.has(ti) && checksum32(raw) !== t.c) {
      throw new FrameError(`tensor ${t.n}: checksum mismatch (corrupt data)`);
    }
    const view = viewAs(t.d, frame.buffer as ArrayBuffer, frame.byteOffset + at, count);
    if (t.s.length !== 1) withShape(view, t.s);
    root = place(root, t.p, view, t.n);
    end = align8(t.o + length);
  }
  const last = headers[headers.length - 1];
  const exact = base + last.o + last.s.reduce((a, b) => a * b, 1) * DTYPE_BYTES[last.d];
  if (frame.byteLength !== exact) {
    throw new FrameError(`frame has ${frame.byteLength - exact} unexpected trailing bytes`);
  }
  return { meta, value: root, tensors: headers };
}

function checkTensorHeader(t: unknown, i: number): TensorHeader {
  const bad = (why: string) => new FrameError(`tensor header ${i} is malformed: ${why}`);
  if (typeof t !== "object" || t === null) throw bad("not an object");
  const r = t as Record<string, unknown>;
  if (typeof r.n !== "string") throw bad("name");
  if (!Array.isArray(r.p) || !r.p.every((k) => typeof k === "string" || Number.isInteger(k))) {
    throw bad("path");
  }
  if (r.d !== "f32" && r.d !== "i32" && r.d !== "u8") throw bad(`unknown dtype ${String(r.d)}`);
  if (!Array.isArray(r.s) || !r.s.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw bad("shape");
  }
  if (!Number.isSafeInteger(r.o) || (r.o as number) % 8 !== 0) throw bad("offset");
  if (!Number.isInteger(r.c)) throw bad("checksum");
  return r as unknown as TensorHeader;
}

function place(root: unknown, path: (string | number)[], view: TensorArray, name: string): unknown {
  if (path.length === 0) return view;
  let node = root;
  for (let i = 0; i < path.length - 1; i++) {
    node = step(node, path[i], name);
  }
  const k = path[path.length - 1];
  if (typeof k === "string" && FORBIDDEN_KEYS.has(k)) {
    throw new FrameError(`tensor ${name}: forbidden key ${k}`);
  }
  if (typeof node !== "object" || node === null || (node as Record<string, unknown>)[k] !== null) {
    throw new FrameError(`tensor ${name}: its path does not lead to a placeholder in the value`);
  }
  (node as Record<string | number, unknown>)[k] = view;
  return root;
}

function step(node: unknown, k: string | number, name: string): unknown {
  if (typeof k === "string" && FORBIDDEN_KEYS.has(k)) {
    throw new FrameError(`tensor ${name}: forbidden key ${k}`);
  }
  if (typeof node !== "object" || node === null || !Object.hasOwn(node, k)) {
    throw new FrameError(`tensor ${name}: its path does not exist in the value`);
  }
  return (node as Record<string | number, unknown>)[k];
}

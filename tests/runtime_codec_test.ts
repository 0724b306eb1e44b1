// Binary frames and their parts, without NATS: round trips are bit-exact, and every kind of damage
// is refused with FrameError.
import assert from "node:assert/strict";
import type { Msg } from "@nats-io/nats-core";
import { Checksum32 } from "../runtime/checksum.ts";
import { formatPart, parsePart, type Part, PART_HEADER } from "../runtime/chunks.ts";
import { FrameInbox } from "../runtime/wire.ts";
import {
  checksum32,
  decodeFrame,
  EncodeError,
  encodeFrame,
  FrameError,
  planFrame,
  Reassembler,
  shapeOf,
  splitFrame,
  splitPlan,
  tensor,
  withShape,
  z,
} from "../internal_mod.ts";

function randomF32(n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (Math.random() - 0.5) * 10 ** (Math.random() * 8 - 4);
  return a;
}

function randomI32(n: number): Int32Array {
  const a = new Int32Array(n);
  for (let i = 0; i < n; i += 16384) crypto.getRandomValues(a.subarray(i, Math.min(n, i + 16384)));
  return a;
}

function randomU8(n: number): Uint8Array {
  const a = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(a.subarray(i, Math.min(n, i + 65536)));
  return a;
}

function sameBits(a: ArrayBufferView, b: ArrayBufferView) {
  assert.equal(a.byteLength, b.byteLength);
  const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  assert.ok(x.every((v, i) => v === y[i]), "bytes differ");
}

Deno.test("frames carry nested tensors bit-exactly, with names, shapes and JSON around them", () => {
  const a = withShape(randomF32(3 * 5), [3, 5]);
  const ids = randomI32(7);
  const mask = randomU8(13);
  const value = {
    step: 4,
    label: "δ update",
    parts: [{ a, note: null }, { ids, nested: { mask } }],
    empty: new Float32Array(0),
  };
  const frame = encodeFrame({ k: "test", n: 1 }, value);
  // Raw bytes, not JSON numbers: the frame is about the size of the tensor data.
  assert.ok(frame.byteLength < 15 * 4 + 7 * 4 + 13 + 600, `frame is ${frame.byteLength} bytes`);
  const d = decodeFrame(frame);
  assert.deepEqual(d.meta, { k: "test", n: 1 });
  const v = d.value as typeof value;
  assert.equal(v.step, 4);
  assert.equal(v.label, "δ update");
  assert.ok(v.parts[0].a instanceof Float32Array);
  sameBits(v.parts[0].a, a);
  assert.deepEqual(shapeOf(v.parts[0].a), [3, 5]);
  assert.ok(v.parts[1].ids instanceof Int32Array);
  sameBits(v.parts[1].ids!, ids);
  assert.ok(v.parts[1].nested!.mask instanceof Uint8Array);
  sameBits(v.parts[1].nested!.mask, mask);
  assert.equal(v.empty.length, 0);
  assert.deepEqual(d.tensors.map((t) => [t.n, t.d]), [
    ["parts.0.a", "f32"],
    ["parts.1.ids", "i32"],
    ["parts.1.nested.mask", "u8"],
    ["empty", "f32"],
  ]);
  // NaN, infinities and negative zero survive (they would not as JSON).
  const special = new Float32Array([NaN, Infinity, -Infinity, -0, 1e-45]);
  const back = decodeFrame(encodeFrame({}, special)).value as Float32Array;
  sameBits(back, special);
});

Deno.test("a tensor that is a view into a larger buffer is sent as its own bytes only", () => {
  const big = randomF32(100);
  const view = big.subarray(10, 20);
  const back = decodeFrame(encodeFrame({}, { view })).value as { view: Float32Array };
  sameBits(back.view, view);
});

Deno.test("values without tensors, and undefined, round-trip as JSON", () => {
  const value = { a: [1, 2.5, "x", true, null], b: { c: "d" } };
  assert.deepEqual(decodeFrame(encodeFrame({ k: 1 }, value)).value, value);
  assert.equal(decodeFrame(encodeFrame({ k: 1 }, undefined)).value, undefined);
});

Deno.test("unsupported typed arrays and unencodable values are refused with EncodeError", () => {
  assert.throws(() => encodeFrame({}, { x: new Float64Array(2) }), EncodeError);
  assert.throws(() => encodeFrame({}, { x: new Uint16Array(2) }), EncodeError);
  assert.throws(() => encodeFrame({}, { x: 1n }), EncodeError);
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  assert.throws(() => encodeFrame({}, cyclic), EncodeError);
});

Deno.test("every flipped bit and every truncation of a frame is refused with FrameError", () => {
  const frame = encodeFrame({ k: "x" }, { a: randomF32(9), s: "hello" });
  // A flipped bit anywhere: header prefix, JSON, padding is not covered but tensor bytes are.
  const positions = [0, 5, 9, 13, 20, 40, frame.byteLength - 1, frame.byteLength - 20];
  for (const p of positions) {
    const bad = frame.slice();
    bad[p] ^= 0x10;
    if (p >= 12 && p < 16) continue; // reserved word, not interpreted
    assert.throws(() => decodeFrame(bad), FrameError, `flip at ${p}`);
  }
  for (const n of [0, 3, 15, 16, 30, frame.byteLength - 1]) {
    assert.throws(() => decodeFrame(frame.subarray(0, n)), FrameError, `truncated to ${n}`);
  }
  const longer = new Uint8Array(frame.byteLength + 8);
  longer.set(frame);
  assert.throws(() => decodeFrame(longer), FrameError);
});

Deno.test("a frame decodes the same from an unaligned copy", () => {
  const a = randomF32(33);
  const frame = encodeFrame({}, { a });
  const host = new Uint8Array(frame.byteLength + 3);
  host.set(frame, 3);
  const back = decodeFrame(host.subarray(3)).value as { a: Float32Array };
  sameBits(back.a, a);
});

Deno.test("checksum32 agrees on aligned and unaligned input and sees single-bit changes", () => {
  const data = randomU8(1001);
  const host = new Uint8Array(1010);
  host.set(data, 1);
  assert.equal(checksum32(data), checksum32(host.subarray(1, 1002)));
  for (const p of [0, 3, 500, 1000]) {
    const d = data.slice();
    d[p] ^= 1;
    assert.notEqual(checksum32(d), checksum32(data));
  }
  assert.notEqual(checksum32(new Uint8Array(4)), checksum32(new Uint8Array(8)));
});

Deno.test("parts reassemble in any order into the exact frame; damage is refused", () => {
  const value = { x: randomF32(40_000), y: randomI32(3000), note: "parts" };
  const frame = encodeFrame({ k: "big" }, value);
  // Parts come straight from the value's own pieces, and rebuild the same bytes as the frame.
  const parts = splitPlan(planFrame({ k: "big" }, value), 16 * 1024)!;
  assert.ok(parts.length > 5);
  assert.ok(parts.every((p) => p.bytes.byteLength <= 16 * 1024));
  assert.ok(parts.some((p) => p.bytes.buffer === value.x.buffer), "tensor bytes are not copied");
  const order = parts.map((_, i) => i).sort(() => Math.random() - 0.5);
  const r = new Reassembler();
  let out: Uint8Array | undefined;
  for (const [j, i] of order.entries()) {
    const got = r.accept(parts[i].info, parts[i].bytes);
    if (j < order.length - 1) assert.equal(got, undefined);
    else out = got;
  }
  assert.ok(out);
  sameBits(out, frame);
  assert.equal(r.pending, 0);
  assert.equal(splitPlan(planFrame({}, { a: 1 }), 1024), undefined, "small frames are not split");

  const dup = new Reassembler();
  dup.accept(parts[0].info, parts[0].bytes);
  assert.throws(() => dup.accept(parts[0].info, parts[0].bytes), FrameError);

  const short = new Reassembler();
  short.accept(parts[0].info, parts[0].bytes);
  assert.throws(() => short.accept(parts[1].info, parts[1].bytes.subarray(1)), FrameError);

  const past = new Reassembler();
  assert.throws(
    () => past.accept({ ...parts[1].info, offset: parts[1].info.total - 10 }, parts[1].bytes),
    FrameError,
  );

  assert.throws(
    () => new Reassembler({ maxFrameBytes: 1000 }).accept(parts[0].info, parts[0].bytes),
    FrameError,
  );
  assert.throws(() => parsePart("zz 1 2 3"), FrameError);
  assert.deepEqual(parsePart(formatPart(parts[3].info)), parts[3].info);

  // A corrupt byte inside a part is caught by the frame checksums after reassembly.
  const bad = new Reassembler();
  let rebuilt: Uint8Array | undefined;
  parts.forEach((p, i) => {
    const copy = p.bytes.slice();
    if (i === 2) copy[100] ^= 0xff;
    rebuilt = bad.accept(p.info, copy) ?? rebuilt;
  });
  assert.ok(rebuilt);
  assert.throws(() => decodeFrame(rebuilt!), FrameError);

  // An encoded frame splits the same way.
  const again = new Reassembler();
  let whole: Uint8Array | undefined;
  for (const p of splitFrame(frame, 10_000)) whole = again.accept(p.info, p.bytes) ?? whole;
  sameBits(whole!, frame);
});

function asMsg(p: Part): Msg {
  const header = formatPart(p.info);
  return {
    subject: "s",
    reply: "",
    data: p.bytes,
    headers: { get: (k: string) => (k === PART_HEADER ? header : "") },
  } as unknown as Msg;
}

Deno.test("checksums computed over pieces equal the one-shot checksum", () => {
  for (const n of [0, 1, 15, 16, 17, 1000, 4099]) {
    const data = randomU8(n + 3).subarray(n % 3); // also unaligned
    const c = new Checksum32();
    for (let o = 0; o < data.length;) {
      const k = Math.min(data.length - o, 1 + Math.floor(Math.random() * 37));
      c.update(data.subarray(o, o + k));
      o += k;
    }
    assert.equal(c.digest(), checksum32(data));
  }
});

Deno.test("parts are verified as they arrive; corrupt or overlapping parts still fail", () => {
  const value = { a: randomF32(30_000), b: randomI32(20_000) };
  const parts = splitPlan(planFrame({ k: "p" }, value), 8192)!;
  const deliver = (list: Part[]) => {
    const inbox = new FrameInbox();
    let out;
    for (const p of list) out = inbox.accept(asMsg(p)) ?? out;
    return out;
  };
  const inOrder = deliver(parts)!.value as typeof value;
  sameBits(inOrder.a, value.a);
  sameBits(inOrder.b, value.b);
  const shuffled = deliver([...parts].sort(() => Math.random() - 0.5))!.value as typeof value;
  sameBits(shuffled.b, value.b);
  // One flipped byte in a middle part.
  const corrupt = parts.map((p, i) => i === 5 ? { info: p.info, bytes: p.bytes.slice() } : p);
  corrupt[5].bytes[17] ^= 4;
  assert.throws(() => deliver(corrupt), FrameError);
  // A part that rewrites bytes already checked (same length, earlier offset) is caught too.
  const overlap = parts.map((p) => ({ info: { ...p.info }, bytes: p.bytes }));
  overlap[4] = {
    info: { ...overlap[4].info, offset: overlap[3].info.offset },
    bytes: randomU8(overlap[4].info.length),
  };
  overlap[4].info.length = overlap[4].bytes.byteLength;
  assert.throws(() => deliver(overlap), FrameError);
});

Deno.test("tensor() schemas check dtype, length and shape", () => {
  const s = tensor("f32", { shape: [2, null] });
  assert.ok(s.safeParse(withShape(new Float32Array(6), [2, 3])).success);
  assert.ok(s.safeParse(new Float32Array(8)).success); // 1-D, length fits [2, *]
  assert.ok(!s.safeParse(new Float32Array(7)).success);
  assert.ok(!s.safeParse(withShape(new Float32Array(6), [3, 2])).success);
  assert.ok(!s.safeParse(new Int32Array(6)).success);
  assert.ok(!s.safeParse([1, 2, 3, 4]).success);
  assert.ok(tensor("i32", { length: 3 }).safeParse(new Int32Array(3)).success);
  assert.ok(!tensor("i32", { length: 3 }).safeParse(new Int32Array(4)).success);
  const msg = z.object({ w: tensor("u8") });
  const parsed = msg.parse({ w: new Uint8Array([1, 2]) });
  assert.ok(parsed.w instanceof Uint8Array);
  assert.throws(() => withShape(new Float32Array(5), [2, 3]), RangeError);
});

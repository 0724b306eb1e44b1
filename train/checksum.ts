/**
 * A checksum of a model's weights: SHA-256 over every tensor in name order (name, shape and raw
 * little-endian f32 bytes). Workers holding bit-identical W give the same hex string.
 * @module
 */
import type { HostTensor } from "../model/safetensors.ts";

export async function weightsChecksum(tensors: ReadonlyMap<string, HostTensor>): Promise<string> {
  const names = [...tensors.keys()].sort();
  const enc = new TextEncoder();
  let size = 0;
  const parts: Uint8Array[] = [];
  for (const n of names) {
    const t = tensors.get(n)!;
    const head = enc.encode(`${n}[${t.shape.join(",")}]`);
    const body = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    parts.push(head, body);
    size += head.length + body.length;
  }
  const all = new Uint8Array(size);
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.length;
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}

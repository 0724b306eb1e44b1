/**
 * Checksums of what must be the same on every worker: a SHA-256 per tensor (its shape and raw
 * little-endian f32 bytes) and one over all of them (the per-tensor digests in name order), so
 * that two workers compare one string and, when it differs, find the tensor that does. Also a
 * checksum of a model's weights in one pass, and the relative difference of two weight sets.
 * @module
 */
import { createHash } from "node:crypto";
import type { HostTensor } from "../../model/safetensors.ts";

/** SHA-256 (hex) of one tensor: its shape and its raw little-endian f32 bytes. */
export function tensorSha256(t: HostTensor): string {
  return createHash("sha256")
    .update(`[${t.shape.join(",")}]`)
    .update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength))
    .digest("hex");
}

/** SHA-256 (hex) of a named integer of the state (an optimizer's step counter). */
export function scalarSha256(value: number): string {
  return createHash("sha256").update(`scalar ${value}`).digest("hex");
}

/**
 * The checksum of a whole state from its per-tensor digests: SHA-256 over one line
 * `<name> <digest>` per entry, in name order. Equal for two states exactly when they hold the
 * same names with the same digests.
 */
export function combinedSha256(digests: Readonly<Record<string, string>>): string {
  const h = createHash("sha256");
  for (const name of Object.keys(digests).sort()) h.update(`${name} ${digests[name]}\n`);
  return h.digest("hex");
}

/** The names whose digests differ between two states, one side's absence included, sorted. */
export function differingEntries(
  a: Readonly<Record<string, string>>,
  b: Readonly<Record<string, string>>,
): string[] {
  const names = new Set([...Object.keys(a), ...Object.keys(b)]);
  return [...names].filter((n) => a[n] !== b[n]).sort();
}

/**
 * A checksum of a model's weights: SHA-256 over every tensor in name order (name, shape and raw
 * little-endian f32 bytes). Workers holding bit-identical W give the same hex string.
 */ export async function weightsChecksum(
  tensors: ReadonlyMap<string, HostTensor>,
): Promise<string> {
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

/**
 * The largest relative difference ‖a − b‖ / ‖b‖ over the tensors of two weight sets (the same
 * names and sizes), with the tensor it was found in: how far two workers' W have drifted apart on
 * devices that round differently. A tensor missing from either side, or of another size, is an
 * infinite difference.
 */
export function maxRelativeDifference(
  a: ReadonlyMap<string, HostTensor>,
  b: ReadonlyMap<string, HostTensor>,
): { name: string; value: number } {
  let worst = { name: "", value: -1 };
  const names = new Set([...a.keys(), ...b.keys()]);
  for (const n of names) {
    const x = a.get(n)?.data, y = b.get(n)?.data;
    let value: number;
    if (!x || !y || x.length !== y.length) {
      value = Infinity;
    } else {
      let num = 0, den = 0;
      for (let i = 0; i < x.length; i++) {
        num += (x[i] - y[i]) ** 2;
        den += y[i] * y[i];
      }
      value = den > 0 ? Math.sqrt(num / den) : (num > 0 ? Infinity : 0);
    }
    if (value > worst.value || Number.isNaN(value)) worst = { name: n, value };
  }
  return worst.value < 0 ? { name: "", value: 0 } : worst;
}

/**
 * A fast 32-bit checksum for frame integrity (not a cryptographic digest).
 *
 * Frames carry up to gigabytes of tensor data, so a byte-wise CRC in JavaScript would cost more
 * than the network. This one mixes 32-bit words in four independent lanes (multiply, rotate),
 * which lets the engine overlap the multiplies; it catches flipped bits, truncation and swapped
 * words. The byte length is mixed in last, so frames of different length never collide by
 * construction of the padding.
 * @module
 */

const P1 = 0x9e3779b1;
const P2 = 0x85ebca77;
const P3 = 0xc2b2ae3d;
const P4 = 0x27d4eb2f;

function rotl(x: number, r: number): number {
  return (x << r) | (x >>> (32 - r));
}

function round(acc: number, word: number): number {
  return Math.imul(rotl((acc + Math.imul(word, P2)) | 0, 13), P1);
}

/** Checksum of `bytes` (any offset and length; word-aligned input takes the fast path). */
export function checksum32(bytes: Uint8Array): number {
  const n = bytes.byteLength;
  const words = n >>> 2;
  let a = P1 + P2, b = P2, c = 0, d = -P1 | 0;
  let i = 0;
  if ((bytes.byteOffset & 3) === 0) {
    const u = new Uint32Array(bytes.buffer, bytes.byteOffset, words);
    const blocks = words & ~3;
    for (; i < blocks; i += 4) {
      a = round(a, u[i]);
      b = round(b, u[i + 1]);
      c = round(c, u[i + 2]);
      d = round(d, u[i + 3]);
    }
    for (; i < words; i++) a = round(a, u[i]);
  } else {
    const v = new DataView(bytes.buffer, bytes.byteOffset, n);
    const blocks = words & ~3;
    for (; i < blocks; i += 4) {
      a = round(a, v.getUint32(i * 4, true));
      b = round(b, v.getUint32(i * 4 + 4, true));
      c = round(c, v.getUint32(i * 4 + 8, true));
      d = round(d, v.getUint32(i * 4 + 12, true));
    }
    for (; i < words; i++) a = round(a, v.getUint32(i * 4, true));
  }
  let h = (rotl(a, 1) + rotl(b, 7) + rotl(c, 12) + rotl(d, 18)) | 0;
  for (let j = words * 4; j < n; j++) {
    h = Math.imul(rotl((h + Math.imul(bytes[j], P4)) | 0, 11), P1);
  }
  h = (h + n) | 0;
  h ^= h >>> 15;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  h ^= h >>> 16;
  return h >>> 0;
}

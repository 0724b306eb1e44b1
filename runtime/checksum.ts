/**
 * A fast 32-bit checksum for frame integrity (not a cryptographic digest).
 *
 * Frames carry up to gigabytes of tensor data, so a byte-wise CRC in JavaScript would cost more
 * than the network. This one mixes 32-bit words in four independent lanes (multiply, rotate),
 * which lets the engine overlap the multiplies; it catches flipped bits, truncation and swapped
 * words. The byte length is mixed in last, so frames of different length never collide by
 * construction of the padding. {@link Checksum32} computes the same value over data that
 * arrives in pieces, so a receiver can verify parts of a big frame as they come in.
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
  return new Checksum32().update(bytes).digest();
}

/** The checksum of a byte stream fed in pieces; `digest()` equals `checksum32` of the whole. */
export class Checksum32 {
  #a = (P1 + P2) | 0;
  #b = P2;
  #c = 0;
  #d = -P1 | 0;
  #n = 0;
  /** Bytes of an incomplete 16-byte block, carried to the next update. */
  readonly #carry = new Uint8Array(16);
  #carried = 0;

  /** Feeds the next bytes of the stream. */
  update(bytes: Uint8Array): this {
    this.#n += bytes.byteLength;
    let from = 0;
    if (this.#carried > 0) {
      from = Math.min(16 - this.#carried, bytes.byteLength);
      this.#carry.set(bytes.subarray(0, from), this.#carried);
      this.#carried += from;
      if (this.#carried < 16) return this;
      this.#blocks(this.#carry, 0, 1);
      this.#carried = 0;
    }
    const rest = bytes.byteLength - from;
    const blocks = rest >>> 4;
    if (blocks > 0) this.#blocks(bytes, from, blocks);
    const tail = rest & 15;
    if (tail > 0) {
      this.#carry.set(bytes.subarray(bytes.byteLength - tail), 0);
      this.#carried = tail;
    }
    return this;
  }

  #blocks(bytes: Uint8Array, from: number, count: number) {
    let a = this.#a, b = this.#b, c = this.#c, d = this.#d;
    const at = bytes.byteOffset + from;
    const words = count * 4;
    if ((at & 3) === 0) {
      const u = new Uint32Array(bytes.buffer, at, words);
      for (let i = 0; i < words; i += 4) {
        a = round(a, u[i]);
        b = round(b, u[i + 1]);
        c = round(c, u[i + 2]);
        d = round(d, u[i + 3]);
      }
    } else {
      const v = new DataView(bytes.buffer, at, words * 4);
      for (let i = 0; i < words * 4; i += 16) {
        a = round(a, v.getUint32(i, true));
        b = round(b, v.getUint32(i + 4, true));
        c = round(c, v.getUint32(i + 8, true));
        d = round(d, v.getUint32(i + 12, true));
      }
    }
    this.#a = a;
    this.#b = b;
    this.#c = c;
    this.#d = d;
  }

  /** The checksum of everything fed so far. */
  digest(): number {
    let a = this.#a;
    const tail = this.#carry.subarray(0, this.#carried);
    const words = tail.byteLength >>> 2;
    const v = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
    for (let i = 0; i < words; i++) a = round(a, v.getUint32(i * 4, true));
    let h = (rotl(a, 1) + rotl(this.#b, 7) + rotl(this.#c, 12) + rotl(this.#d, 18)) | 0;
    for (let j = words * 4; j < tail.byteLength; j++) {
      h = Math.imul(rotl((h + Math.imul(tail[j], P4)) | 0, 11), P1);
    }
    h = (h + this.#n) | 0;
    h ^= h >>> 15;
    h = Math.imul(h, P2);
    h ^= h >>> 13;
    h = Math.imul(h, P3);
    h ^= h >>> 16;
    return h >>> 0;
  }
}

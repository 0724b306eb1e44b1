/**
 * A small seeded pseudo-random generator (xoshiro128**), so that every run with the same seed
 * makes the same choices on every platform. Its whole state is four 32-bit words, which
 * checkpoints save and restore.
 */
export class Rng {
  #s: Uint32Array;

  constructor(seed: number | Uint32Array = 0) {
    if (seed instanceof Uint32Array) {
      if (seed.length !== 4) throw new RangeError("Rng state must be 4 words");
      this.#s = Uint32Array.from(seed);
    } else {
      // SplitMix32 spreads a small integer seed over the four state words.
      this.#s = new Uint32Array(4);
      let x = (Math.floor(seed) >>> 0) ^ 0x9e3779b9;
      for (let i = 0; i < 4; i++) {
        x = (x + 0x9e3779b9) >>> 0;
        let z = x;
        z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
        z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
        this.#s[i] = (z ^ (z >>> 16)) >>> 0;
      }
      if (this.#s.every((w) => w === 0)) this.#s[0] = 1;
    }
  }

  /** The generator's state, to save in a checkpoint. */
  get state(): Uint32Array {
    return Uint32Array.from(this.#s);
  }

  /** A uniform 32-bit unsigned integer. */
  u32(): number {
    const s = this.#s;
    const r = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }

  /** A uniform float in [0, 1) with 53 random bits. */
  float(): number {
    const hi = this.u32() >>> 5; // 27 bits
    const lo = this.u32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** A uniform float in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.float();
  }

  /** A standard normal sample (Box-Muller). */
  normal(): number {
    let u = 0;
    while (u === 0) u = this.float();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.float());
  }

  /** A uniform integer in [0, n). */
  int(n: number): number {
    if (!(n >= 1)) throw new RangeError(`Rng.int needs n >= 1, got ${n}`);
    return Math.floor(this.float() * n);
  }

  /** Shuffles `a` in place (Fisher-Yates) and returns it. */
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const tmp = a[i];
      a[i] = a[j];
      a[j] = tmp;
    }
    return a;
  }

  /** A Float32Array of standard normal samples times `scale`. */
  normals(n: number, scale = 1): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.normal() * scale;
    return out;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

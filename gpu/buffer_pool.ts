/**
 * A pool of GPUBuffers in size classes, so that temporary tensors, staging buffers and uniform
 * arenas are reused instead of created every step.
 * @module
 */

/**
 * Rounds a byte count up to its size class, so that sizes that differ a little share buffers:
 * 256-byte multiples up to 4 KiB, quarter steps between powers of two up to 1 MiB (at most 25%
 * waste on small scratch), then 64 KiB multiples (at most 6%, and less on the large weight
 * tensors that dominate memory).
 */
export function sizeClass(bytes: number): number {
  const b = Math.max(16, Math.ceil(bytes));
  if (b <= 4096) return Math.ceil(b / 256) * 256;
  if (b > 1 << 20) return Math.ceil(b / 65536) * 65536;
  const p = 2 ** Math.floor(Math.log2(b));
  const step = p / 4;
  return Math.ceil(b / step) * step;
}

export interface PoolStats {
  /** Buffers created since the pool opened. */
  created: number;
  /** Buffers now handed out. */
  inUse: number;
  /** Buffers waiting in the free lists. */
  free: number;
  /** Bytes of every live buffer (in use or free). */
  bytes: number;
}

/** Free lists of buffers keyed by usage and size class. */
export class BufferPool {
  #free = new Map<string, GPUBuffer[]>();
  #sizes = new WeakMap<GPUBuffer, number>();
  #created = 0;
  #inUse = 0;
  #bytes = 0;
  #closed = false;

  constructor(readonly device: GPUDevice, readonly onDestroy: (b: GPUBuffer) => void = () => {}) {}

  /** A buffer of at least `bytes` bytes with exactly `usage`; contents are undefined. */
  acquire(bytes: number, usage: GPUBufferUsageFlags, label = ""): GPUBuffer {
    const size = sizeClass(bytes);
    const list = this.#free.get(`${usage}:${size}`);
    this.#inUse++;
    const reused = list?.pop();
    if (reused) return reused;
    const buffer = this.device.createBuffer({ size, usage, label });
    this.#sizes.set(buffer, size);
    this.#created++;
    this.#bytes += size;
    return buffer;
  }

  /** Returns a buffer obtained from `acquire`. Work already submitted may still use it. */
  release(buffer: GPUBuffer): void {
    const size = this.#sizes.get(buffer);
    if (size === undefined) throw new Error("buffer was not acquired from this pool");
    this.#inUse--;
    if (this.#closed) {
      this.#destroy(buffer, size);
      return;
    }
    const key = `${buffer.usage}:${size}`;
    let list = this.#free.get(key);
    if (!list) this.#free.set(key, list = []);
    list.push(buffer);
  }

  /** Destroys every free buffer (in-use ones stay). */
  trim(): void {
    for (const list of this.#free.values()) {
      for (const b of list) this.#destroy(b, this.#sizes.get(b) ?? 0);
    }
    this.#free.clear();
  }

  /** Destroys the free buffers; buffers released later are destroyed at once. */
  close(): void {
    this.#closed = true;
    this.trim();
  }

  stats(): PoolStats {
    let free = 0;
    for (const l of this.#free.values()) free += l.length;
    return { created: this.#created, inUse: this.#inUse, free, bytes: this.#bytes };
  }

  #destroy(b: GPUBuffer, size: number): void {
    this.onDestroy(b);
    b.destroy();
    this.#bytes -= size;
  }
}

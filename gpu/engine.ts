/**
 * The engine: one WebGPU device with its buffer pool, pipeline cache, bind-group cache and
 * uniform arenas. Kernels record into a `Recorder` made by `Gpu.record()`.
 * @module
 */
import { type AutotuneOptions, chooseTile, fixedChoice, type MatmulChoice } from "./autotune.ts";
import { BufferPool, type PoolStats } from "./buffer_pool.ts";
import { type DeviceInfo, type DeviceOptions, openDevice } from "./device.ts";
import {
  DeviceLostError,
  GpuClosedError,
  type GpuError,
  GpuOutOfMemoryError,
  GpuShapeError,
  GpuValidationError,
} from "./errors.ts";
import type { BindingDecls, KernelRef, ParamDecls } from "./kernel.ts";
import { TILE_SHAPES, type TileShape } from "./kernels/matmul_tiled.ts";
import { type CompiledKernel, PipelineCache } from "./pipeline_cache.ts";
import {
  type ArenaChunk,
  type MatmulVariant,
  QUERIES_PER_SET,
  Recorder,
  type RecorderHost,
  type RecordOptions,
} from "./recorder.ts";
import { type HalfType, halfWords } from "./half.ts";
import {
  type Allocation,
  type DType,
  dtypeBytes,
  GpuTensor,
  isHalf,
  numel,
  rowBlockCounts,
  type RowParts,
} from "./tensor.ts";

export type { MatmulVariant } from "./recorder.ts";

export interface GpuOptions extends DeviceOptions {
  /**
   * "auto" (default): per-thread register blocking on CPU adapters (lavapipe), where workgroup
   * memory is slow, and workgroup-memory tiling on real GPUs.
   */
  matmul?: "auto" | MatmulVariant;
  /**
   * Tile shape of the tiled matmul by name (kernels/matmul_tiled.ts `TILE_SHAPES`); default:
   * the autotune's choice on a GPU (gpu/autotune.ts), the default shape on a CPU adapter.
   */
  matmulTile?: string;
  /** Options of the autotune (cache file, size; `force` tunes on a CPU adapter too). */
  autotune?: AutotuneOptions;
  /** Where the engine's one-line notes go (the matmul choice); default stderr on a GPU only. */
  log?: (line: string) => void;
  /**
   * Lowers `limits.maxStorageBufferBindingSize` to this many bytes (never raises it), e.g. so
   * that tests exercise the row-split tensors without allocating the device's real limit.
   */
  maxBindingBytes?: number;
}

export interface EngineStats extends PoolStats {
  pipelines: number;
  bindGroups: number;
  /** The matmul kernel in use and how it was chosen (gpu/autotune.ts). */
  matmul: { variant: MatmulVariant; tile: string; source: MatmulChoice["source"] };
}

const TENSOR_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
// 64 KiB holds the Params of 256 dispatches even at a 256-byte uniform offset alignment.
const ARENA_BYTES = 64 * 1024;
// Bind groups are cheap to rebuild; the cap only bounds memory when callers churn tensors.
const MAX_BIND_GROUPS = 8192;

/**
 * A WebGPU device and everything cached on it. Open with `Gpu.open()`, close with `close()`.
 *
 * Ordering: `upload`/`write` go through the device queue, so they are ordered before any later
 * `submit`, and after every earlier one.
 */
function bindingLimit(device: number, options: GpuOptions): number {
  const b = options.maxBindingBytes;
  if (b === undefined) return device;
  if (!Number.isInteger(b) || b < 256 || b % 4 !== 0) {
    throw new GpuShapeError(`maxBindingBytes must be a multiple of 4 >= 256, got ${b}`);
  }
  return Math.min(device, b);
}

export class Gpu {
  readonly adapter: GPUAdapter;
  readonly device: GPUDevice;
  readonly info: DeviceInfo;
  /** The device's limits that the kernels and checks use. */
  readonly limits: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxComputeWorkgroupsPerDimension: number;
    minStorageBufferOffsetAlignment: number;
    minUniformBufferOffsetAlignment: number;
    maxComputeWorkgroupStorageSize: number;
    maxComputeInvocationsPerWorkgroup: number;
  };

  #owner = {};
  #pool: BufferPool;
  #pipelines: PipelineCache;
  #bindGroups = new Map<string, GPUBindGroup>();
  #bufferIds = new WeakMap<GPUBuffer, number>();
  #nextBufferId = 1;
  #arenas: ArenaChunk[] = [];
  #arenaCount = 0;
  #querySets: GPUQuerySet[] = [];
  #allQuerySets: GPUQuerySet[] = [];
  #failure: GpuError | null = null;
  #lost: Promise<never>;
  #closed = false;
  #host: RecorderHost;
  #matmul: MatmulChoice;

  private constructor(
    opened: { adapter: GPUAdapter; device: GPUDevice; info: DeviceInfo },
    options: GpuOptions,
  ) {
    this.adapter = opened.adapter;
    this.device = opened.device;
    this.info = opened.info;
    const l = this.device.limits;
    this.limits = {
      maxStorageBufferBindingSize: bindingLimit(l.maxStorageBufferBindingSize, options),
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      minStorageBufferOffsetAlignment: l.minStorageBufferOffsetAlignment,
      minUniformBufferOffsetAlignment: l.minUniformBufferOffsetAlignment,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
    };
    const choice = options.matmul ?? "auto";
    const variant = choice === "auto" ? (this.info.isCpu ? "register" : "tiled") : choice;
    this.#matmul = fixedChoice(this.info, variant, options.matmulTile);
    // Any destroyed buffer may sit in a cached bind group; dropping them all is simple and rare.
    this.#pool = new BufferPool(this.device, () => this.#bindGroups.clear());
    this.#pipelines = new PipelineCache(this.device);

    this.#lost = this.device.lost.then((info) => {
      const e = this.#closed ? new GpuClosedError("the engine was closed") : new DeviceLostError(
        String(info.reason),
        `the WebGPU device was lost (${info.reason}): ${info.message || "no message"}; ` +
          `open a new Gpu to continue`,
      );
      this.#failure ??= e;
      throw e;
    });
    this.#lost.catch(() => {});
    this.device.addEventListener("uncapturederror", (ev) => {
      const err = (ev as GPUUncapturedErrorEvent).error;
      const E = err instanceof GPUOutOfMemoryError ? GpuOutOfMemoryError : GpuValidationError;
      this.#failure ??= new E(`WebGPU error: ${err.message}`);
    });
    this.#host = this.#makeHost();
  }

  /** Opens a device (see `openDevice`) and wraps it in an engine. */
  static async open(options: GpuOptions = {}): Promise<Gpu> {
    const gpu = new Gpu(await openDevice(options), options);
    const log = options.log ?? ((line: string) => {
      if (!gpu.info.isCpu) console.error(line);
    });
    const tune = gpu.#matmul.variant === "tiled" && options.matmulTile === undefined &&
      (!gpu.info.isCpu || options.autotune?.force === true);
    try {
      if (tune) gpu.#matmul = await chooseTile(gpu, options.autotune ?? {}, log);
      else log(gpu.#matmul.note);
    } catch (e) {
      gpu.close();
      throw e;
    }
    return gpu;
  }

  /** The matmul implementation in use (see gpu/autotune.ts). */
  get matmulVariant(): MatmulVariant {
    return this.#matmul.variant;
  }

  /** The matmul kernel in use, how it was chosen, and the line that announced it. */
  get matmulChoice(): Readonly<MatmulChoice> {
    return this.#matmul;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Throws the first failure (lost device, uncaptured WebGPU error) or if closed. */
  check(): void {
    if (this.#failure) throw this.#failure;
    if (this.#closed) throw new GpuClosedError("the engine was closed");
  }

  /** A tensor from the pool; its contents are undefined until written. */
  tensor(shape: readonly number[], dtype: DType = "f32", label = ""): GpuTensor {
    this.check();
    const bytes = dtypeBytes(dtype, numel(shape));
    if (bytes > this.limits.maxStorageBufferBindingSize) {
      throw new GpuShapeError(
        `tensor ${label} [${shape.join(", ")}] needs ${bytes} bytes, over the device's ` +
          `maxStorageBufferBindingSize ${this.limits.maxStorageBufferBindingSize}`,
      );
    }
    const buffer = this.#pool.acquire(bytes, TENSOR_USAGE, label);
    const allocation: Allocation = {
      buffer,
      bufferId: this.#bufferId(buffer),
      capacity: buffer.size,
      owner: this.#owner,
      alive: true,
    };
    return new GpuTensor(allocation, shape, dtype, 0, label);
  }

  /** A tensor filled with zeros. */
  zeros(shape: readonly number[], dtype: DType = "f32", label = ""): GpuTensor {
    const t = this.tensor(shape, dtype, label);
    const enc = this.device.createCommandEncoder();
    enc.clearBuffer(t.buffer, 0, t.bytes);
    this.device.queue.submit([enc.finish()]);
    return t;
  }

  /** A new tensor holding `data` (f32 for Float32Array, i32 for Int32Array). */
  upload(
    data: Float32Array | Int32Array,
    shape: readonly number[] = [data.length],
    label = "",
  ): GpuTensor {
    const t = this.tensor(shape, data instanceof Int32Array ? "i32" : "f32", label);
    try {
      this.write(t, data);
    } catch (e) {
      this.release(t);
      throw e;
    }
    return t;
  }

  /**
   * A new 16-bit tensor holding the elements whose bits are `halves` (see gpu/half.ts; an odd
   * count is padded to a whole word).
   */
  uploadHalf(
    halves: Uint16Array,
    dtype: HalfType,
    shape: readonly number[] = [halves.length],
    label = "",
  ): GpuTensor {
    const t = this.tensor(shape, dtype, label);
    try {
      this.write(t, halves);
    } catch (e) {
      this.release(t);
      throw e;
    }
    return t;
  }

  /**
   * A [rows, cols] matrix as row blocks each within the binding limit (one part when the whole
   * fits). `data` null gives zeros; f32 values for an f32 matrix, element bits (Uint16Array) for
   * a bf16/f16 one. `splitAs` "f32" sizes a 16-bit matrix's blocks by their f32 bytes, so that
   * an f32 copy of any block (the product before a rounded in-place update) fits a binding too.
   */
  uploadRows(
    data: Float32Array | Uint16Array | null,
    rows: number,
    cols: number,
    label = "",
    dtype: "f32" | HalfType = "f32",
    splitAs: "f32" | HalfType = dtype,
  ): RowParts {
    if (data && (data instanceof Uint16Array) !== isHalf(dtype)) {
      throw new GpuShapeError(`uploadRows: ${data.constructor.name} data for a ${dtype} matrix`);
    }
    const counts = rowBlockCounts(
      rows,
      cols,
      this.limits.maxStorageBufferBindingSize,
      this.limits.minStorageBufferOffsetAlignment,
      splitAs,
    );
    if (data && data.length !== rows * cols) {
      throw new GpuShapeError(`uploadRows: ${data.length} values do not fit [${rows}, ${cols}]`);
    }
    const parts: GpuTensor[] = [];
    const starts: number[] = [];
    let r = 0;
    try {
      for (const n of counts) {
        const name = counts.length > 1 ? `${label} rows ${r}..${r + n}` : label;
        const block = data?.subarray(r * cols, (r + n) * cols);
        parts.push(
          block instanceof Uint16Array
            ? this.uploadHalf(block, dtype as HalfType, [n, cols], name)
            : block
            ? this.upload(block, [n, cols], name)
            : this.zeros([n, cols], dtype, name),
        );
        starts.push(r);
        r += n;
      }
    } catch (e) {
      for (const t of parts) this.release(t);
      throw e;
    }
    return { rows, cols, label, parts, starts, counts };
  }

  /**
   * Overwrites all of `t` with `data` (same length and dtype; a bf16/f16 tensor takes its
   * elements' bits as a Uint16Array).
   */
  write(t: GpuTensor, data: Float32Array | Int32Array | Uint16Array): void {
    this.check();
    this.#checkOwned("write", t);
    const kind = data instanceof Int32Array
      ? "i32"
      : data instanceof Uint16Array
      ? "16-bit"
      : "f32";
    const fits = data instanceof Uint16Array ? isHalf(t.dtype) : kind === t.dtype;
    if (data.length !== t.size || !fits) {
      throw new GpuShapeError(`write: ${data.length} ${kind} values do not fit ${t.describe()}`);
    }
    if (data instanceof Uint16Array && (data.length % 2 !== 0 || data.byteOffset % 4 !== 0)) {
      // writeBuffer moves whole words: pad the last one (its high half is zero).
      const words = new Uint32Array(halfWords(data.length));
      new Uint16Array(words.buffer).set(data);
      this.device.queue.writeBuffer(t.buffer, t.offset, words);
      return;
    }
    this.device.queue.writeBuffer(t.buffer, t.offset, data as unknown as BufferSource);
  }

  /** Returns `t`'s buffer to the pool; `t` and its views become unusable. */
  release(t: GpuTensor): void {
    this.#checkOwned("release", t);
    t.allocation.alive = false;
    this.#pool.release(t.buffer);
  }

  /** Copies `t` back to the host (one submit and wait). */
  async read(t: GpuTensor): Promise<Float32Array | Int32Array> {
    return (await this.readMany([t]))[0];
  }

  /** Copies `t` (an f32 tensor, or a bf16/f16 one as exact f32 values) back to the host. */
  async readF32(t: GpuTensor): Promise<Float32Array> {
    if (t.dtype === "i32") throw new GpuShapeError(`readF32: ${t.describe()} is not f32`);
    return (await this.read(t)) as Float32Array;
  }

  /** Copies several tensors back with one submit. */
  async readMany(ts: readonly GpuTensor[]): Promise<(Float32Array | Int32Array)[]> {
    const rec = this.record({ label: "read" });
    const ps = ts.map((t) => rec.read(t));
    await rec.submit();
    return Promise.all(ps);
  }

  /**
   * Records `body` into a fresh recorder, submits it and returns the values of `reads` as they
   * are at the end (a convenience for one-off work and tests; steps use `record` directly).
   */
  async run(
    body: (rec: Recorder) => void,
    reads: readonly GpuTensor[] = [],
    options: RecordOptions = {},
  ): Promise<(Float32Array | Int32Array)[]> {
    const rec = this.record(options);
    let ps: Promise<Float32Array | Int32Array>[];
    try {
      body(rec);
      ps = reads.map((t) => rec.read(t));
    } catch (e) {
      rec.discard();
      throw e;
    }
    await rec.submit();
    return Promise.all(ps);
  }

  /** A recorder for one submit (typically one training step). */
  record(options: RecordOptions = {}): Recorder {
    this.check();
    return new Recorder(this.#host, options);
  }

  /** Waits until all submitted work is done; throws a pending failure. */
  async sync(): Promise<void> {
    this.check();
    await this.#host.waitQueue();
    this.check();
  }

  stats(): EngineStats {
    return {
      ...this.#pool.stats(),
      pipelines: this.#pipelines.size,
      bindGroups: this.#bindGroups.size,
      matmul: {
        variant: this.#matmul.variant,
        tile: this.#matmul.tile,
        source: this.#matmul.source,
      },
    };
  }

  /** Destroys every buffer and the device. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#bindGroups.clear();
    this.#pool.close();
    for (const a of this.#arenas) a.buffer.destroy();
    for (const q of this.#allQuerySets) q.destroy();
    this.device.destroy();
  }

  #bufferId(b: GPUBuffer): number {
    let id = this.#bufferIds.get(b);
    if (id === undefined) this.#bufferIds.set(b, id = this.#nextBufferId++);
    return id;
  }

  #checkOwned(what: string, t: GpuTensor): void {
    if (t.allocation.owner !== this.#owner) {
      throw new GpuShapeError(`${what}: ${t.describe()} belongs to another engine`);
    }
    if (!t.allocation.alive) throw new GpuClosedError(`${what}: ${t.describe()} was released`);
  }

  #makeHost(): RecorderHost {
    const device = this.device;
    // The matmul choice is made after the host (the autotune records with it): read it live.
    // deno-lint-ignore no-this-alias
    const self = this;
    const race = <T>(p: Promise<T>): Promise<T> => Promise.race([p, this.#lost]);
    return {
      device,
      owner: this.#owner,
      timestamps: this.info.timestamps,
      uniformAlign: this.limits.minUniformBufferOffsetAlignment,
      storageAlign: this.limits.minStorageBufferOffsetAlignment,
      maxBinding: this.limits.maxStorageBufferBindingSize,
      maxGroups: this.limits.maxComputeWorkgroupsPerDimension,
      arenaBytes: ARENA_BYTES,
      get matmulVariant(): MatmulVariant {
        return self.#matmul.variant;
      },
      get matmulTile(): TileShape {
        return TILE_SHAPES[self.#matmul.tile];
      },
      shaderF16: this.info.shaderF16,
      onCpu: this.info.isCpu,
      kernel: (ref: KernelRef<ParamDecls, BindingDecls>): CompiledKernel =>
        this.#pipelines.get(ref),
      bindGroup: (key, make) => {
        let g = this.#bindGroups.get(key);
        if (!g) {
          if (this.#bindGroups.size >= MAX_BIND_GROUPS) this.#bindGroups.clear();
          g = make();
          this.#bindGroups.set(key, g);
        }
        return g;
      },
      acquireArena: () =>
        this.#arenas.pop() ?? {
          buffer: device.createBuffer({
            label: "uniform arena",
            size: ARENA_BYTES,
            usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
          }),
          id: ++this.#arenaCount,
        },
      releaseArena: (c) => {
        if (this.#closed) c.buffer.destroy();
        else this.#arenas.push(c);
      },
      acquireQuerySet: () => {
        const q = this.#querySets.pop();
        if (q) return q;
        const made = device.createQuerySet({ type: "timestamp", count: QUERIES_PER_SET });
        this.#allQuerySets.push(made);
        return made;
      },
      releaseQuerySet: (q) => {
        if (!this.#closed) this.#querySets.push(q);
      },
      acquireBuffer: (bytes, usage) => this.#pool.acquire(bytes, usage),
      releaseBuffer: (b) => this.#pool.release(b),
      waitQueue: () => race(device.queue.onSubmittedWorkDone()),
      mapRead: (b) => race(b.mapAsync(GPUMapMode.READ)),
      check: () => this.check(),
      tensor: (shape, dtype, label) => this.tensor(shape, dtype, label),
      release: (t) => this.release(t),
    };
  }
}

/**
 * Recording many kernel dispatches into one command encoder and submitting them at once.
 *
 * A step of the model is recorded into one `Recorder`: each kernel function appends a dispatch
 * (its scalar parameters go into a uniform arena, bound with a dynamic offset, so bind groups
 * are cached across steps); `read` schedules a copy to a staging buffer at that point of the
 * stream; `submit` writes the arena, submits once, waits, and resolves the reads.
 * @module
 */
import {
  GpuClosedError,
  GpuError,
  GpuOutOfMemoryError,
  GpuShapeError,
  GpuValidationError,
  KernelArgumentError,
  KernelLoopBoundError,
} from "./errors.ts";
import {
  type BindingDecls,
  type DispatchArgs,
  type KernelInterface,
  type KernelRef,
  MAX_INVOCATION_LOOP,
  type ParamDecls,
} from "./kernel.ts";
import type { CompiledKernel } from "./pipeline_cache.ts";
import { unpackHalf } from "./half.ts";
import { type DType, GpuTensor, isHalf } from "./tensor.ts";
import type { TileShape } from "./kernels/matmul_tiled.ts";

/** Timing of one timed section (a kernel in profile mode, or a `timed` block). */
export interface Section {
  label: string;
  ms: number;
}

export interface SubmitResult {
  /** Milliseconds from submit until the queue reported the work done (includes driver latency). */
  wallMs: number;
  /** Sum of the timed sections measured with timestamp queries; null without them. */
  gpuMs: number | null;
  /** Timed sections in recording order (empty without timestamp queries or sections). */
  sections: Section[];
  /** Number of kernel dispatches submitted. */
  dispatches: number;
}

/** Which matmul implementation a device prefers (see kernels/matmul.ts). */
export type MatmulVariant = "register" | "tiled";

export interface RecordOptions {
  label?: string;
  /** Time every dispatch with timestamp queries (when the device has them). */
  profile?: boolean;
}

/** A uniform-arena chunk: one buffer holding the Params of many dispatches. */
export interface ArenaChunk {
  readonly buffer: GPUBuffer;
  readonly id: number;
}

/** What a recorder needs from its engine. */
export interface RecorderHost {
  readonly device: GPUDevice;
  readonly owner: object;
  readonly timestamps: boolean;
  readonly uniformAlign: number;
  readonly storageAlign: number;
  readonly maxBinding: number;
  readonly maxGroups: number;
  readonly arenaBytes: number;
  readonly matmulVariant: MatmulVariant;
  /** The tiled matmul's tile shape on this device (gpu/autotune.ts). */
  readonly matmulTile: TileShape;
  /** `shader-f16` is enabled on the device. */
  readonly shaderF16: boolean;
  readonly onCpu: boolean;
  kernel(ref: KernelRef<ParamDecls, BindingDecls>): CompiledKernel;
  bindGroup(key: string, make: () => GPUBindGroup): GPUBindGroup;
  acquireArena(): ArenaChunk;
  releaseArena(c: ArenaChunk): void;
  acquireQuerySet(): GPUQuerySet;
  releaseQuerySet(q: GPUQuerySet): void;
  acquireBuffer(bytes: number, usage: GPUBufferUsageFlags): GPUBuffer;
  releaseBuffer(b: GPUBuffer): void;
  /** Waits for the queue, rejecting when the device is lost. */
  waitQueue(): Promise<void>;
  /** Maps a MAP_READ buffer, rejecting when the device is lost. */
  mapRead(b: GPUBuffer): Promise<void>;
  /** Throws the engine's pending failure (device lost, uncaptured error), if any. */
  check(): void;
  /** A pooled tensor (see `Gpu.tensor`). */
  tensor(shape: readonly number[], dtype: DType, label: string): GpuTensor;
  /** Returns a tensor from `tensor` to the pool. */
  release(t: GpuTensor): void;
}

/** Queries per query set; a timed section uses two. */
export const QUERIES_PER_SET = 256;

interface ChunkUse {
  chunk: ArenaChunk;
  data: ArrayBuffer;
  used: number;
}

interface PendingRead {
  tensor: GpuTensor;
  staging: GPUBuffer;
  resolve: (v: Float32Array | Int32Array) => void;
  reject: (e: unknown) => void;
}

/** Records dispatches for one submit. Not reusable after `submit` or `discard`. */
export class Recorder {
  readonly label: string;
  readonly profile: boolean;
  #host: RecorderHost;
  #encoder: GPUCommandEncoder;
  #pass: GPUComputePassEncoder | null = null;
  #chunks: ChunkUse[] = [];
  #querySets: GPUQuerySet[] = [];
  #queriesUsed = 0;
  #sections: { label: string; index: number }[] = [];
  #reads: PendingRead[] = [];
  #scratch: GpuTensor[] = [];
  #inTimed = false;
  #state: "recording" | "submitted" | "discarded" = "recording";
  #dispatches = 0;

  constructor(host: RecorderHost, options: RecordOptions = {}) {
    this.#host = host;
    this.label = options.label ?? "step";
    this.profile = Boolean(options.profile) && host.timestamps;
    this.#encoder = host.device.createCommandEncoder({ label: this.label });
  }

  /** The matmul implementation preferred on this device. */
  get matmulVariant(): MatmulVariant {
    return this.#host.matmulVariant;
  }

  /** The tiled matmul's tile shape on this device (gpu/autotune.ts). */
  get matmulTile(): TileShape {
    return this.#host.matmulTile;
  }

  /** `shader-f16` is enabled on the device (kernels may `enable f16`). */
  get shaderF16(): boolean {
    return this.#host.shaderF16;
  }

  /** The device is a CPU adapter (lavapipe): kernels pick CPU-friendly workgroup shapes. */
  get onCpu(): boolean {
    return this.#host.onCpu;
  }

  /** Dispatches recorded so far. */
  get dispatches(): number {
    return this.#dispatches;
  }

  /**
   * A pooled tensor for intermediate values of this recording (partial sums of a reduction):
   * it stays reserved until the recorder is submitted or discarded, then goes back to the pool.
   * Contents are undefined until a dispatch writes them.
   */
  scratch(shape: readonly number[], dtype: DType = "f32", label = "scratch"): GpuTensor {
    this.#assertRecording();
    const t = this.#host.tensor(shape, dtype, label);
    this.#scratch.push(t);
    return t;
  }

  /**
   * Appends one dispatch of `kernel` over `grid` workgroups, binding `bindings` and `params` by
   * the names the kernel declares. Validates every argument first. A grid with a zero dimension
   * records nothing.
   * @throws KernelArgumentError for a missing or unknown binding or parameter, a tensor whose
   *   dtype does not match its binding, or a parameter that is not a number of its type.
   * @throws KernelLoopBoundError when the kernel's declared loop bound for these parameters
   *   exceeds `MAX_INVOCATION_LOOP` (the shape is not supported).
   * @throws GpuShapeError for an unaligned, oversized or aliased tensor, or a grid too large.
   */
  dispatch<P extends ParamDecls, B extends BindingDecls>(
    kernel: KernelRef<P, B>,
    args: DispatchArgs<P, B>,
  ): void {
    this.#assertRecording();
    const host = this.#host;
    const k = host.kernel(kernel);
    const iface = k.iface;
    const tensors = this.#bindingTensors(iface, args.bindings);
    const params = encodeParams(iface, args.params);
    checkLoopBound(iface, args.params);
    for (let i = 0; i < tensors.length; i++) this.#checkBinding(iface, tensors, i);
    const [gx, gy = 1, gz = 1] = args.grid;
    for (const g of [gx, gy, gz]) {
      if (!Number.isInteger(g) || g < 0 || g > host.maxGroups) {
        throw new GpuShapeError(
          `${iface.name}: grid [${gx}, ${gy}, ${gz}] exceeds the device's ${host.maxGroups} ` +
            `workgroups per dimension`,
        );
      }
    }
    if (gx === 0 || gy === 0 || gz === 0) return;

    const { chunk, offset } = this.#writeParams(params);
    let key = `${k.id}|${chunk.id}`;
    for (const t of tensors) key += `|${t.allocation.bufferId}@${t.offset}+${t.bytes}`;
    const group = host.bindGroup(key, () =>
      host.device.createBindGroup({
        label: iface.name,
        layout: k.layout,
        entries: [
          { binding: 0, resource: { buffer: chunk.buffer, offset: 0, size: iface.paramBytes } },
          ...tensors.map((t, i) => ({
            binding: i + 1,
            resource: { buffer: t.buffer, offset: t.offset, size: t.bytes },
          })),
        ],
      }));

    const timeIt = this.profile && !this.#inTimed;
    if (timeIt) this.#beginTimedPass(iface.name);
    const pass = this.#pass ?? (this.#pass = this.#encoder.beginComputePass({ label: this.label }));
    pass.setPipeline(k.pipeline);
    pass.setBindGroup(0, group, [offset]);
    pass.dispatchWorkgroups(gx, gy, gz);
    this.#dispatches++;
    if (timeIt) this.#endPass();
  }

  /** Copies all of `src` into `dst` (same element count and dtype). */
  copy(dst: GpuTensor, src: GpuTensor): void {
    this.#assertRecording();
    this.#assertOutsideTimed("copy");
    this.#checkOwned("copy", dst);
    this.#checkOwned("copy", src);
    if (dst.size !== src.size || dst.dtype !== src.dtype) {
      throw new GpuShapeError(`copy: ${src.describe()} does not fit ${dst.describe()}`);
    }
    if (dst.allocation === src.allocation) {
      throw new GpuShapeError("copy: source and destination share a buffer");
    }
    this.#endPass();
    this.#encoder.copyBufferToBuffer(src.buffer, src.offset, dst.buffer, dst.offset, src.bytes);
  }

  /** Sets every element of `t` to zero (any dtype). */
  clear(t: GpuTensor): void {
    this.#assertRecording();
    this.#assertOutsideTimed("clear");
    this.#checkOwned("clear", t);
    this.#endPass();
    this.#encoder.clearBuffer(t.buffer, t.offset, t.bytes);
  }

  /**
   * Schedules a copy of `t` as it is at this point of the stream; the promise resolves with the
   * values once `submit` has completed (and rejects if the submit fails or is discarded). A
   * bf16/f16 tensor resolves with its elements' exact f32 values.
   */
  read(t: GpuTensor): Promise<Float32Array | Int32Array> {
    this.#assertRecording();
    this.#assertOutsideTimed("read");
    this.#checkOwned("read", t);
    this.#endPass();
    const staging = this.#host.acquireBuffer(
      t.bytes,
      GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    );
    this.#encoder.copyBufferToBuffer(t.buffer, t.offset, staging, 0, t.bytes);
    const p = new Promise<Float32Array | Int32Array>((resolve, reject) =>
      this.#reads.push({ tensor: t, staging, resolve, reject })
    );
    // The caller may await the submit first; a failed submit must not become an unhandled
    // rejection of this promise in the meantime.
    p.catch(() => {});
    return p;
  }

  /**
   * Times the dispatches recorded by `body` as one section, with timestamp queries when the
   * device has them (otherwise `body` just runs and no section is reported).
   */
  timed(label: string, body: () => void): void {
    this.#assertRecording();
    this.#assertOutsideTimed("timed");
    if (!this.#host.timestamps) {
      body();
      return;
    }
    this.#beginTimedPass(label);
    this.#inTimed = true;
    try {
      body();
    } finally {
      this.#inTimed = false;
      this.#endPass();
    }
  }

  /**
   * Submits everything recorded, waits until the device has finished, resolves the pending
   * reads and returns the timings.
   * @throws GpuValidationError / GpuOutOfMemoryError / DeviceLostError when the device reports
   *   a failure; the pending reads reject with the same error.
   */
  async submit(): Promise<SubmitResult> {
    this.#assertRecording();
    this.#state = "submitted";
    const host = this.#host;
    const device = host.device;
    let timestampsRead: GPUBuffer | null = null;
    const staged: GPUBuffer[] = [];
    try {
      this.#endPass();
      if (this.#queriesUsed > 0) {
        timestampsRead = this.#resolveTimestamps(staged);
      }
      for (const c of this.#chunks) device.queue.writeBuffer(c.chunk.buffer, 0, c.data, 0, c.used);
      device.pushErrorScope("out-of-memory");
      device.pushErrorScope("validation");
      const commands = this.#encoder.finish({ label: this.label });
      const t0 = performance.now();
      device.queue.submit([commands]);
      const validation = await device.popErrorScope();
      const oom = await device.popErrorScope();
      if (validation) {
        throw new GpuValidationError(`recorder '${this.label}': ${validation.message}`);
      }
      if (oom) throw new GpuOutOfMemoryError(`recorder '${this.label}': ${oom.message}`);
      await host.waitQueue();
      const wallMs = performance.now() - t0;
      host.check();

      // Map every staging buffer at once: each map waits for the device's next poll, so mapping
      // them one after another costs a poll interval per read.
      await Promise.all(this.#reads.map((r) => host.mapRead(r.staging)));
      for (const r of this.#reads) {
        const bytes = r.staging.getMappedRange(0, r.tensor.bytes).slice(0);
        r.staging.unmap();
        const dt = r.tensor.dtype;
        r.resolve(
          dt === "i32" ? new Int32Array(bytes) : isHalf(dt)
            // 16-bit elements come back as their exact f32 values (checkpoints, checksums).
            ? unpackHalf(new Uint32Array(bytes), r.tensor.size, dt)
            : new Float32Array(bytes),
        );
      }
      let sections: Section[] = [];
      let gpuMs: number | null = null;
      if (timestampsRead) {
        await host.mapRead(timestampsRead);
        const ticks = new BigInt64Array(
          timestampsRead.getMappedRange(0, this.#queriesUsed * 8).slice(0),
        );
        timestampsRead.unmap();
        sections = this.#sections.map((s) => ({
          label: s.label,
          ms: Math.max(0, Number(ticks[s.index + 1] - ticks[s.index])) / 1e6,
        }));
        gpuMs = sections.reduce((a, s) => a + s.ms, 0);
      }
      return { wallMs, gpuMs, sections, dispatches: this.#dispatches };
    } catch (e) {
      for (const r of this.#reads) r.reject(e);
      throw e instanceof GpuError
        ? e
        : new GpuError(`recorder '${this.label}' failed`, { cause: e });
    } finally {
      this.#releaseAll(staged);
    }
  }

  /** Drops everything recorded; pending reads reject with GpuClosedError. */
  discard(): void {
    if (this.#state !== "recording") return;
    this.#state = "discarded";
    try {
      this.#pass?.end();
    } catch { /* the encoder is dropped anyway */ }
    this.#pass = null;
    for (const r of this.#reads) {
      r.reject(new GpuClosedError(`recorder '${this.label}' was discarded`));
    }
    this.#releaseAll([]);
  }

  #releaseAll(extra: GPUBuffer[]): void {
    const host = this.#host;
    // Reverse order, so that the host's free lists hand them out in the same order next step
    // and the bind groups cached for this step match again.
    for (const c of this.#chunks.reverse()) host.releaseArena(c.chunk);
    this.#chunks.length = 0;
    for (const q of this.#querySets.reverse()) host.releaseQuerySet(q);
    this.#querySets.length = 0;
    for (const r of this.#reads) host.releaseBuffer(r.staging);
    this.#reads.length = 0;
    for (const t of this.#scratch.reverse()) host.release(t);
    this.#scratch.length = 0;
    for (const b of extra) host.releaseBuffer(b);
  }

  #resolveTimestamps(staged: GPUBuffer[]): GPUBuffer {
    const host = this.#host;
    const total = this.#queriesUsed * 8;
    const read = host.acquireBuffer(total, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
    staged.push(read);
    this.#querySets.forEach((set, i) => {
      const count = Math.min(QUERIES_PER_SET, this.#queriesUsed - i * QUERIES_PER_SET);
      const resolve = host.acquireBuffer(
        count * 8,
        GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      );
      staged.push(resolve);
      this.#encoder.resolveQuerySet(set, 0, count, resolve, 0);
      this.#encoder.copyBufferToBuffer(resolve, 0, read, i * QUERIES_PER_SET * 8, count * 8);
    });
    return read;
  }

  #beginTimedPass(label: string): void {
    this.#endPass();
    const slot = this.#queriesUsed % QUERIES_PER_SET;
    if (slot === 0) this.#querySets.push(this.#host.acquireQuerySet());
    const set = this.#querySets[this.#querySets.length - 1];
    this.#sections.push({ label, index: this.#queriesUsed });
    this.#queriesUsed += 2;
    this.#pass = this.#encoder.beginComputePass({
      label,
      timestampWrites: {
        querySet: set,
        beginningOfPassWriteIndex: slot,
        endOfPassWriteIndex: slot + 1,
      },
    });
  }

  #endPass(): void {
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
  }

  /** Copies one dispatch's Params words into the arena; returns where they went. */
  #writeParams(params: Uint32Array): { chunk: ArenaChunk; offset: number } {
    const host = this.#host;
    const stride = Math.ceil(params.byteLength / host.uniformAlign) * host.uniformAlign;
    let use = this.#chunks[this.#chunks.length - 1];
    if (!use || use.used + stride > host.arenaBytes) {
      use = { chunk: host.acquireArena(), data: new ArrayBuffer(host.arenaBytes), used: 0 };
      this.#chunks.push(use);
    }
    const offset = use.used;
    new Uint32Array(use.data, offset, params.length).set(params);
    use.used += stride;
    return { chunk: use.chunk, offset };
  }

  #checkOwned(what: string, t: GpuTensor): void {
    if (t.allocation.owner !== this.#host.owner) {
      throw new GpuShapeError(`${what}: ${t.describe()} belongs to another engine`);
    }
    if (!t.allocation.alive) {
      throw new GpuClosedError(`${what}: ${t.describe()} was released`);
    }
  }

  /** The tensors of `given` in binding order, stand-ins for absent optional bindings. */
  #bindingTensors(
    iface: KernelInterface,
    given: Readonly<Record<string, GpuTensor | null | undefined>>,
  ): GpuTensor[] {
    const kernel = iface.name;
    for (const name of Object.keys(given)) {
      if (!iface.bindingIndex.has(name)) {
        const known = iface.bindings.map((b) => b.name).join(", ");
        throw new KernelArgumentError(
          kernel,
          name,
          "unknown",
          `no binding named '${name}' (bindings: ${known})`,
        );
      }
    }
    const tensors: GpuTensor[] = new Array(iface.bindings.length);
    for (const [i, b] of iface.bindings.entries()) {
      const t = given[b.name];
      if (t === undefined || t === null) {
        if (!b.optional) {
          throw new KernelArgumentError(kernel, b.name, "missing", `binding '${b.name}' missing`);
        }
        continue;
      }
      if (!(t instanceof GpuTensor) || t.dtype !== b.dtype) {
        const got = t instanceof GpuTensor ? t.describe() : String(t);
        throw new KernelArgumentError(
          kernel,
          b.name,
          "dtype",
          `binding '${b.name}' is array<${b.element}> and needs a ${b.dtype} tensor, got ${got}`,
        );
      }
      if (b.element === "vec4<f32>" && (t.offset % 16 !== 0 || t.size % 4 !== 0)) {
        throw new GpuShapeError(
          `${kernel}: binding '${b.name}' is array<vec4<f32>>; ${t.describe()} at byte ` +
            `${t.offset} is not whole 16-byte vectors`,
        );
      }
      tensors[i] = t;
    }
    for (const [i, b] of iface.bindings.entries()) tensors[i] ??= tensors[b.standIn];
    return tensors;
  }

  #checkBinding(iface: KernelInterface, tensors: readonly GpuTensor[], i: number): void {
    const t = tensors[i];
    const host = this.#host;
    const name = iface.name;
    this.#checkOwned(name, t);
    if (t.offset % host.storageAlign !== 0) {
      throw new GpuShapeError(
        `${name}: ${t.describe()} starts at byte ${t.offset}, not a multiple of the ` +
          `device's minStorageBufferOffsetAlignment ${host.storageAlign}`,
      );
    }
    if (t.bytes > host.maxBinding) {
      throw new GpuShapeError(
        `${name}: ${t.describe()} has ${t.bytes} bytes, over the device's ` +
          `maxStorageBufferBindingSize ${host.maxBinding}`,
      );
    }
    // WebGPU forbids a buffer bound both read-only and writable in one dispatch.
    const bindings = iface.bindings;
    if (bindings[i].access === "read_write") {
      for (let j = 0; j < tensors.length; j++) {
        if (j !== i && bindings[j].access === "read" && tensors[j].allocation === t.allocation) {
          throw new GpuShapeError(
            `${name}: output ${t.describe()} shares its buffer with input ` +
              `${tensors[j].describe()}`,
          );
        }
      }
    }
  }

  #assertRecording(): void {
    if (this.#state !== "recording") {
      throw new GpuClosedError(`recorder '${this.label}' was already ${this.#state}`);
    }
  }

  #assertOutsideTimed(what: string): void {
    if (this.#inTimed) throw new GpuError(`${what} is not allowed inside a timed section`);
  }
}

/**
 * Refuses a dispatch whose declared loop bound exceeds `MAX_INVOCATION_LOOP`.
 * @throws KernelLoopBoundError naming the kernel, its parameters, the bound and the limit.
 */
function checkLoopBound(
  iface: KernelInterface,
  given: Readonly<Record<string, number | undefined>>,
): void {
  if (!iface.loopBound) return;
  const bound = iface.loopBound(given as Readonly<Record<string, number>>);
  if (bound <= MAX_INVOCATION_LOOP) return;
  const shape = iface.params.map((q) => `${q.name} = ${given[q.name]}`).join(", ");
  throw new KernelLoopBoundError(
    iface.name,
    bound,
    MAX_INVOCATION_LOOP,
    `with ${shape} one invocation would run up to ${bound} loop passes, over the limit of ` +
      `${MAX_INVOCATION_LOOP} per invocation (MAX_INVOCATION_LOOP); this shape is not supported`,
  );
}

/**
 * The values of `given` as the 32-bit words of the Params struct, in declaration order.
 * @throws KernelArgumentError for a missing or unknown parameter, a value that is not a number,
 *   or a u32 / i32 value that is not an integer in range (f32 takes any number, NaN included).
 */
function encodeParams(
  iface: KernelInterface,
  given: Readonly<Record<string, number | undefined>>,
): Uint32Array {
  const kernel = iface.name;
  for (const name of Object.keys(given)) {
    if (!iface.paramIndex.has(name)) {
      const known = iface.params.map((q) => q.name).join(", ");
      throw new KernelArgumentError(
        kernel,
        name,
        "unknown",
        `no parameter named '${name}' (parameters: ${known})`,
      );
    }
  }
  const words = new Uint32Array(iface.paramBytes / 4);
  const i32 = new Int32Array(words.buffer);
  const f32 = new Float32Array(words.buffer);
  for (const [k, { name, type }] of iface.params.entries()) {
    const v = given[name];
    if (v === undefined) {
      throw new KernelArgumentError(kernel, name, "missing", `parameter '${name}' missing`);
    }
    const bad = (what: string) =>
      new KernelArgumentError(kernel, name, "dtype", `parameter ${name} = ${v} is not ${what}`);
    if (typeof v !== "number") throw bad(`a number (${type})`);
    if (type === "u32") {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw bad("a u32");
      words[k] = v;
    } else if (type === "i32") {
      if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) throw bad("an i32");
      i32[k] = v;
    } else {
      f32[k] = v;
    }
  }
  return words;
}

/**
 * The model's parameters on the device: every weight (Hugging Face names), the full-weight
 * gradient buffers of the trainable ones, and the adapter slots (A, B, g_A, g_B) of the adapted
 * linears. Weights are checked against the config before anything is uploaded.
 *
 * Weights dtype (`--weights-dtype`): every matrix (the linears, the embedding table, the
 * lm_head) may be held in bf16 or f16 on the device, packed two per word (gpu/half.ts), which
 * halves the largest term of the memory plan; the kernels convert each element to f32 exactly
 * and compute in f32. The vectors (RMSNorm gains, biases) stay f32: they are a vanishing share
 * of the bytes and their kernels stay as they are. A weight with a full-weight gradient stays
 * f32 too (refused by `LlamaGpu.create`): an optimizer updating W in place needs an f32 W.
 * Values are rounded to nearest even on upload; for a BF16/F16 checkpoint loaded at its own
 * dtype that rounding is exact (the file's bits come back), and an f16 overflow (|w| > 65504)
 * is refused naming the tensor rather than turned into an infinity.
 * @module
 */
import {
  type Gpu,
  type GpuTensor,
  type HalfType,
  type Matrix,
  packHalf,
  type RowParts,
} from "../gpu/mod.ts";
import {
  adaptableLinears,
  checkConfigAgainstTensors,
  expectedTensors,
  type LinearKind,
  type LlamaConfig,
} from "./config.ts";
import type { HostTensor, TensorRows } from "./safetensors.ts";
import type { AdapterBuffers } from "./llama_linear.ts";
import { LlamaOptionsError, LlamaWeightError } from "./llama_errors.ts";
import { heldInWeightsDtype, WEIGHTS_DTYPES, type WeightsDtype } from "./weights_dtype.ts";

export { heldInWeightsDtype, WEIGHTS_DTYPES, type WeightsDtype };

/**
 * A weight's f32 values as the element bits of `dtype`, rounded to nearest even.
 * @throws LlamaWeightError naming the tensor when a finite value is out of the format's range
 *   (f16: |w| > 65504, rounded to infinity otherwise).
 */
export function halfBits(name: string, data: Float32Array, dtype: HalfType): Uint16Array {
  const words = packHalf(data, dtype, (i, v) => {
    const limit = dtype === "f16" ? "65504" : "3.39e38";
    throw new LlamaWeightError(
      name,
      `weight "${name}" element ${i} = ${v} is outside the ${dtype} range (|w| <= ${limit}); ` +
        `use --weights-dtype ${dtype === "f16" ? "bf16 or " : ""}f32`,
    );
  });
  return new Uint16Array(words.buffer, 0, data.length);
}

export interface ParamOptions {
  adapters?: { targets: readonly LinearKind[]; rank: number };
  /** The matrices' device dtype (default f32; see the module doc). */
  weightsDtype?: WeightsDtype;
  /** Names of the weights that get a gradient buffer. */
  gradNames: readonly string[];
}

/**
 * Throws LlamaWeightError unless every tensor the config implies is present and well-shaped, and
 * ConfigError (naming the field and the tensor) where the weights contradict the config: a bias
 * the config switches off, or q/k shapes of another head dimension.
 */
export function checkWeights(config: LlamaConfig, weights: ReadonlyMap<string, HostTensor>): void {
  checkWeightShapes(config, weights);
  for (const spec of expectedTensors(config)) {
    const t = weights.get(spec.name)!;
    const n = spec.shape.reduce((a, b) => a * b, 1);
    if (!(t.data instanceof Float32Array) || t.data.length !== n) {
      throw new LlamaWeightError(
        spec.name,
        `weight "${spec.name}" must hold ${n} f32 values, got ${t.data?.length ?? "none"}`,
      );
    }
  }
}

/** As {@link checkWeights}, from the shapes alone (the values are checked as they are read). */
export function checkWeightShapes(
  config: LlamaConfig,
  weights: ReadonlyMap<string, { shape: readonly number[] }>,
): void {
  checkConfigAgainstTensors(config, weights, "weights");
  for (const spec of expectedTensors(config)) {
    const t = weights.get(spec.name);
    const want = `[${spec.shape.join(", ")}]`;
    if (!t) throw new LlamaWeightError(spec.name, `missing weight "${spec.name}" (shape ${want})`);
    const sameShape = t.shape.length === spec.shape.length &&
      t.shape.every((d, i) => d === spec.shape[i]);
    if (!sameShape) {
      throw new LlamaWeightError(
        spec.name,
        `weight "${spec.name}" has shape [${t.shape.join(", ")}], the config implies ${want}`,
      );
    }
  }
}

/** Weights in host memory as {@link TensorRows}: a row range is a view of the tensor, no copy. */
export function hostRows(weights: ReadonlyMap<string, HostTensor>): Map<string, TensorRows> {
  const out = new Map<string, TensorRows>();
  for (const [name, t] of weights) {
    const cols = t.shape.slice(1).reduce((a, b) => a * b, 1);
    out.set(name, {
      shape: t.shape,
      dtype: "F32",
      rows: (start, count) =>
        Promise.resolve(t.data.subarray(start * cols, (start + count) * cols)),
    });
  }
  return out;
}

/** The weights always held as row blocks (split when over the device's binding limit). */
export const ROW_SPLIT_NAMES: readonly string[] = ["model.embed_tokens.weight", "lm_head.weight"];

/**
 * Whether any other matrix (a linear's W) is held as row blocks: when its f32 bytes are over the
 * binding limit. Its blocks are sized by their f32 bytes whatever the weights dtype, so that the
 * f32 product of a block (HD-PiSSA's update, an adapter merge into a 16-bit W) fits a binding too.
 */
export function splitsLinear(shape: readonly number[], maxBinding: number): boolean {
  return shape.length === 2 && shape[0] * shape[1] * 4 > maxBinding;
}

export class LlamaParams {
  /** Every weight that is one tensor (a split one is only in `rowParts`). */
  readonly weights = new Map<string, GpuTensor>();
  readonly grads = new Map<string, GpuTensor>();
  /** The embedding table and lm_head as row blocks (one block when they fit one binding). */
  readonly rowParts = new Map<string, RowParts>();
  readonly gradParts = new Map<string, RowParts>();
  /** Every weight name, in checkpoint order. */
  readonly names: string[] = [];
  readonly adapters = new Map<string, AdapterBuffers>();
  /** The adapter rank (0 without adapters). */
  readonly rank: number;
  /** The matrices' device dtype. */
  readonly weightsDtype: WeightsDtype;
  #gpu: Gpu;

  private constructor(gpu: Gpu, rank: number, weightsDtype: WeightsDtype) {
    this.#gpu = gpu;
    this.rank = rank;
    this.weightsDtype = weightsDtype;
  }

  /** Validates, then uploads the weights and allocates gradients and zeroed adapter slots. */
  static create(
    gpu: Gpu,
    config: LlamaConfig,
    weights: ReadonlyMap<string, HostTensor>,
    options: ParamOptions,
  ): LlamaParams {
    checkWeights(config, weights);
    const { p, linears, wd, trained } = LlamaParams.#begin(gpu, config, options);
    try {
      for (const [name, shape] of p.#shapes) {
        p.names.push(name);
        const f32 = weights.get(name)!.data as Float32Array;
        const dtype = p.#dtypeOf(name, shape, wd, trained);
        const data = dtype === "f32" ? f32 : halfBits(name, f32, dtype);
        const split = p.#splitAs(name, shape, dtype);
        if (split) {
          const parts = gpu.uploadRows(data, shape[0], shape[1], name, dtype, split);
          p.rowParts.set(name, parts);
          if (parts.parts.length === 1) p.weights.set(name, parts.parts[0]);
        } else if (data instanceof Uint16Array) {
          p.weights.set(name, gpu.uploadHalf(data, dtype as HalfType, shape, name));
        } else {
          p.weights.set(name, gpu.upload(data, shape, name));
        }
      }
      p.#allocate(options, linears);
    } catch (e) {
      p.release();
      throw e;
    }
    return p;
  }

  /**
   * As {@link create}, reading each weight only when it is uploaded: one tensor at a time, and
   * the row-split tables (embedding, lm_head) one row block at a time, each flushed to the device
   * before the next is read. The host then holds about one tensor (or block) beyond the device's
   * bytes while loading, not a copy of W; the uploaded values are the same.
   */
  static async createStreamed(
    gpu: Gpu,
    config: LlamaConfig,
    weights: ReadonlyMap<string, TensorRows>,
    options: ParamOptions,
  ): Promise<LlamaParams> {
    checkWeightShapes(config, weights);
    const { p, linears, wd, trained } = LlamaParams.#begin(gpu, config, options);
    // writeBuffer copies into a staging buffer the queue keeps until its next submission: flush
    // after each write, or the staging copies add up to W.
    const flush = () => gpu.record({ label: "weights upload" }).submit();
    try {
      for (const [name, shape] of p.#shapes) {
        p.names.push(name);
        const src = weights.get(name)!;
        const dtype = p.#dtypeOf(name, shape, wd, trained);
        const read = async (start: number, count: number, elems: number) => {
          const f32 = await src.rows(start, count);
          if (!(f32 instanceof Float32Array) || f32.length !== elems) {
            throw new LlamaWeightError(
              name,
              `weight "${name}" rows ${start}..${start + count}: ${elems} f32 values expected`,
            );
          }
          return dtype === "f32" ? f32 : halfBits(name, f32, dtype);
        };
        const split = p.#splitAs(name, shape, dtype);
        if (split) {
          const parts = gpu.uploadRows(null, shape[0], shape[1], name, dtype, split);
          p.rowParts.set(name, parts);
          if (parts.parts.length === 1) p.weights.set(name, parts.parts[0]);
          for (let i = 0; i < parts.parts.length; i++) {
            const n = parts.counts[i];
            gpu.write(parts.parts[i], await read(parts.starts[i], n, n * shape[1]));
            await flush();
          }
        } else {
          const n = shape.reduce((a, b) => a * b, 1);
          const data = await read(0, shape.length === 0 ? 1 : shape[0], n);
          p.weights.set(
            name,
            data instanceof Uint16Array
              ? gpu.uploadHalf(data, dtype as HalfType, shape, name)
              : gpu.upload(data, shape, name),
          );
          await flush();
        }
      }
      p.#allocate(options, linears);
    } catch (e) {
      p.release();
      throw e;
    }
    return p;
  }

  #shapes = new Map<string, number[]>();

  /** The dtype a weight's row blocks are sized by, or null when it is held as one tensor. */
  #splitAs(name: string, shape: readonly number[], dtype: "f32" | HalfType) {
    if (ROW_SPLIT_NAMES.includes(name)) return dtype;
    return splitsLinear(shape, this.#gpu.limits.maxStorageBufferBindingSize) ? "f32" : null;
  }

  /** A weight as one tensor or as its row blocks (the linear layers take either). */
  matrix(name: string): Matrix | undefined {
    return this.weights.get(name) ?? this.rowParts.get(name);
  }

  /** A weight's gradient as one tensor or as row blocks (split as the weight is). */
  gradMatrix(name: string): Matrix | undefined {
    return this.grads.get(name) ?? this.gradParts.get(name);
  }

  static #begin(gpu: Gpu, config: LlamaConfig, options: ParamOptions) {
    const ad = options.adapters;
    if (ad && (!Number.isInteger(ad.rank) || ad.rank < 1)) {
      throw new LlamaOptionsError(`adapter rank must be an integer >= 1, got ${ad.rank}`);
    }
    let linears: ReturnType<typeof adaptableLinears> = [];
    if (ad) {
      if (ad.targets.length === 0) throw new LlamaOptionsError("adapters: no target layers");
      try {
        linears = adaptableLinears(config, ad.targets);
      } catch (e) {
        throw new LlamaOptionsError(`adapters: ${(e as Error).message}`);
      }
    }
    const wd = options.weightsDtype ?? "f32";
    if (!WEIGHTS_DTYPES.includes(wd)) {
      throw new LlamaOptionsError(`weightsDtype must be f32, bf16 or f16, got ${wd}`);
    }
    const trained = new Set(options.gradNames);
    const p = new LlamaParams(gpu, ad?.rank ?? 0, wd);
    p.#shapes = new Map(expectedTensors(config).map((s) => [s.name, s.shape]));
    return { p, linears, wd, trained };
  }

  #dtypeOf(
    name: string,
    shape: readonly number[],
    wd: WeightsDtype,
    trained: ReadonlySet<string>,
  ): "f32" | HalfType {
    return wd !== "f32" && heldInWeightsDtype(shape) && !trained.has(name) ? wd : "f32";
  }

  /** The gradient buffers of the trained weights and the zeroed adapter slots. */
  #allocate(options: ParamOptions, linears: ReturnType<typeof adaptableLinears>): void {
    const gpu = this.#gpu;
    for (const name of options.gradNames) {
      const shape = this.#shapes.get(name);
      if (!shape) throw new LlamaWeightError(name, `no weight "${name}" to train`);
      if (this.#splitAs(name, shape, "f32")) {
        const parts = gpu.uploadRows(null, shape[0], shape[1], `grad ${name}`);
        this.gradParts.set(name, parts);
        if (parts.parts.length === 1) this.grads.set(name, parts.parts[0]);
      } else {
        this.grads.set(name, gpu.zeros(shape, "f32", `grad ${name}`));
      }
    }
    for (const lin of linears) {
      const r = this.rank;
      this.adapters.set(lin.name, {
        A: gpu.zeros([r, lin.in], "f32", `A ${lin.name}`),
        B: gpu.zeros([lin.out, r], "f32", `B ${lin.name}`),
        gA: gpu.zeros([r, lin.in], "f32", `gA ${lin.name}`),
        gB: gpu.zeros([lin.out, r], "f32", `gB ${lin.name}`),
      });
    }
  }

  /** Every gradient buffer (weights, then adapters' g_A, g_B), e.g. to zero them. */
  allGrads(): GpuTensor[] {
    const out = [...this.grads.values()];
    for (const g of this.gradParts.values()) if (g.parts.length > 1) out.push(...g.parts);
    for (const a of this.adapters.values()) out.push(a.gA, a.gB);
    return out;
  }

  release(): void {
    const all = [...this.weights.values(), ...this.grads.values()];
    for (const r of [...this.rowParts.values(), ...this.gradParts.values()]) all.push(...r.parts);
    for (const a of this.adapters.values()) all.push(a.A, a.B, a.gA, a.gB);
    for (const t of all) if (t.allocation.alive) this.#gpu.release(t);
    this.weights.clear();
    this.grads.clear();
    this.rowParts.clear();
    this.gradParts.clear();
    this.adapters.clear();
  }
}

/**
 * Kernel descriptions and the compute-pipeline cache keyed by WGSL source and entry point.
 * @module
 */

/** How a kernel uses a storage binding. */
export type Access = "read" | "rw";

/**
 * A WGSL compute kernel. Binding 0 of group 0 is always `var<uniform> p: Params` (bound with a
 * dynamic offset into the recorder's uniform arena); bindings 1..n are the storage buffers in
 * `bindings` order.
 */
export interface KernelSpec {
  /** Short name, used in timings and errors. */
  readonly name: string;
  /** Complete WGSL source. */
  readonly code: string;
  /** Entry point; default "main". */
  readonly entry?: string;
  readonly bindings: readonly Access[];
  /**
   * Scalar fields of the `Params` struct in declaration order, one letter each: `u` (u32),
   * `i` (i32), `f` (f32). All are 4 bytes, so field k sits at byte 4k.
   */
  readonly params: string;
}

/** A kernel ready to dispatch. */
export interface CompiledKernel {
  readonly id: number;
  readonly spec: KernelSpec;
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
  /** Size of the Params struct as WGSL lays it out (16-byte multiple). */
  readonly paramBytes: number;
}

/** Compiles each distinct (source, entry point) once per device. */
export class PipelineCache {
  #bySource = new Map<string, CompiledKernel>();
  #bySpec = new WeakMap<KernelSpec, CompiledKernel>();
  #next = 1;

  constructor(readonly device: GPUDevice) {}

  get(spec: KernelSpec): CompiledKernel {
    const hit = this.#bySpec.get(spec);
    if (hit) return hit;
    const entry = spec.entry ?? "main";
    const key = `${entry}\n${spec.code}`;
    let k = this.#bySource.get(key);
    if (!k) {
      k = this.#compile(spec, entry);
      this.#bySource.set(key, k);
    }
    this.#bySpec.set(spec, k);
    return k;
  }

  /** Number of distinct pipelines compiled. */
  get size(): number {
    return this.#bySource.size;
  }

  #compile(spec: KernelSpec, entry: string): CompiledKernel {
    if (!/^[uif]+$/.test(spec.params)) {
      throw new Error(`kernel ${spec.name}: params must be a non-empty string of u/i/f`);
    }
    const paramBytes = Math.ceil((spec.params.length * 4) / 16) * 16;
    const entries: GPUBindGroupLayoutEntry[] = [{
      binding: 0,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type: "uniform", hasDynamicOffset: true, minBindingSize: paramBytes },
    }];
    spec.bindings.forEach((a, i) =>
      entries.push({
        binding: i + 1,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: a === "read" ? "read-only-storage" : "storage" },
      })
    );
    const layout = this.device.createBindGroupLayout({ label: spec.name, entries });
    const module = this.device.createShaderModule({ label: spec.name, code: spec.code });
    const pipeline = this.device.createComputePipeline({
      label: spec.name,
      layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: entry },
    });
    return { id: this.#next++, spec, pipeline, layout, paramBytes };
  }
}

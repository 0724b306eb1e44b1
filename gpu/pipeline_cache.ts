/**
 * The compute-pipeline cache: the one place kernels are generated and compiled. A kernel is
 * looked up by its declaring object and variant key (so a step recorded again does not generate
 * its WGSL again); pipelines are shared by every declaration that generates the same source and
 * entry point.
 * @module
 */
import {
  type BindingDecls,
  type KernelInterface,
  kernelInterface,
  type KernelRef,
  type ParamDecls,
} from "./kernel.ts";

/** A kernel ready to dispatch. */
export interface CompiledKernel {
  /** Number of the pipeline (shared by declarations with the same source). */
  readonly id: number;
  readonly iface: KernelInterface;
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
}

type Pipeline = Pick<CompiledKernel, "id" | "pipeline" | "layout">;

/** Generates each kernel variant once and compiles each distinct (source, entry point) once. */
export class PipelineCache {
  #byRef = new WeakMap<object, Map<string, CompiledKernel>>();
  #bySource = new Map<string, Pipeline>();
  #next = 1;

  constructor(readonly device: GPUDevice) {}

  get(ref: KernelRef<ParamDecls, BindingDecls>): CompiledKernel {
    let variants = this.#byRef.get(ref.family);
    if (!variants) this.#byRef.set(ref.family, variants = new Map());
    let k = variants.get(ref.key);
    if (!k) {
      const iface = kernelInterface(ref.declare());
      const source = `${iface.entry}\n${iface.code}`;
      let p = this.#bySource.get(source);
      if (!p) this.#bySource.set(source, p = this.#compile(iface));
      k = { ...p, iface };
      variants.set(ref.key, k);
    }
    return k;
  }

  /** Number of distinct pipelines compiled. */
  get size(): number {
    return this.#bySource.size;
  }

  #compile(iface: KernelInterface): Pipeline {
    const entries: GPUBindGroupLayoutEntry[] = [{
      binding: 0,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type: "uniform", hasDynamicOffset: true, minBindingSize: iface.paramBytes },
    }];
    for (const b of iface.bindings) {
      entries.push({
        binding: b.binding,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: b.access === "read" ? "read-only-storage" : "storage" },
      });
    }
    const label = iface.name;
    const layout = this.device.createBindGroupLayout({ label, entries });
    const module = this.device.createShaderModule({ label, code: iface.code });
    const pipeline = this.device.createComputePipeline({
      label,
      layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: iface.entry },
    });
    return { id: this.#next++, pipeline, layout };
  }
}

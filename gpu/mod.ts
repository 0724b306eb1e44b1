/**
 * The WebGPU engine and its kernels.
 *
 * ```ts
 * const gpu = await Gpu.open();
 * const x = gpu.upload(data, [T, H]);
 * const rec = gpu.record();
 * matmulNT(rec, y, x, W);          // y = x·Wᵀ
 * const loss = rec.read(lossTensor);
 * await rec.submit();               // one submit per step
 * console.log(await loss);
 * gpu.close();
 * ```
 * @module
 */
export * from "./errors.ts";
export {
  ADAPTER_CHOICES,
  type AdapterChoice,
  adapterIsCpu,
  type DeviceInfo,
  type DeviceOptions,
  openDevice,
  probeAdapter,
} from "./device.ts";
export {
  f16BitsToNumber,
  f32BitsToBf16,
  f32BitsToF16,
  type HalfType,
  halfWords,
  packHalf,
  unpackHalf,
} from "./half.ts";
export {
  type Allocation,
  type DType,
  dtypeBytes,
  GpuTensor,
  isHalf,
  isRowParts,
  type Matrix,
  matrixShape,
  numel,
  rowBlockCounts,
  type RowParts,
} from "./tensor.ts";
export { BufferPool, type PoolStats, sizeClass } from "./buffer_pool.ts";
export {
  type Access,
  type BindingArgs,
  type BindingDecls,
  type BindingInfo,
  type BindingType,
  defineKernel,
  defineKernelVariants,
  type DispatchArgs,
  type ElementType,
  type Grid,
  hasLoop,
  Kernel,
  type KernelDecl,
  kernelHeader,
  type KernelInterface,
  kernelInterface,
  type KernelRef,
  kernelSource,
  KernelVariants,
  MAX_INVOCATION_LOOP,
  type ParamArgs,
  type ParamDecls,
  type ParamInfo,
  type ParamType,
} from "./kernel.ts";
export { type CompiledKernel, PipelineCache } from "./pipeline_cache.ts";
export {
  type MatmulVariant,
  Recorder,
  type RecordOptions,
  type Section,
  type SubmitResult,
} from "./recorder.ts";
export { type EngineStats, Gpu, type GpuOptions } from "./engine.ts";
export * from "./kernels/matmul.ts";
export * from "./kernels/embedding.ts";
export * from "./kernels/rmsnorm.ts";
export * from "./kernels/rope.ts";
export * from "./kernels/attention.ts";
export * from "./kernels/bias.ts";
export * from "./kernels/swiglu.ts";
export * from "./kernels/elementwise.ts";
export * from "./kernels/cross_entropy.ts";
export * from "./kernels/reduce.ts";
export * from "./kernels/optimizer.ts";
export * from "./kernels/hd_pissa.ts";
export * from "./kernels/matmul_rows.ts";
export * from "./kernels/argmax.ts";
export * from "./kernels/packed.ts";

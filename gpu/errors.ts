/**
 * Typed errors of the WebGPU engine. Every failure the engine can diagnose is one of these, so
 * callers can tell a missing driver from a lost device from a programming error.
 * @module
 */

import { DomainError } from "../core/errors.ts";
import { z } from "zod";

/** Base class of every error thrown by `gpu/`. */
export class GpuError extends DomainError {
  static override readonly code: string = "GPU";
}

/** No WebGPU adapter could be found (no GPU and no Vulkan software driver). */
export class NoAdapterError extends GpuError {
  static override readonly code: string = "NO_ADAPTER";
}

/** The device was lost (driver reset, out of memory at the driver level, or destroyed). */
export class DeviceLostError extends GpuError {
  static override readonly code: string = "DEVICE_LOST";
  static readonly fields = z.object({ reason: z.string() });
  constructor(readonly reason: string, message: string) {
    super(message);
  }
}

/** WebGPU reported a validation error (a bug in the engine or in its caller). */
export class GpuValidationError extends GpuError {
  static override readonly code: string = "GPU_VALIDATION";
}

/** WebGPU could not allocate memory. */
export class GpuOutOfMemoryError extends GpuError {
  static override readonly code: string = "GPU_OUT_OF_MEMORY";
}

/** A tensor has the wrong shape, size, dtype or device for the kernel it was given to. */
export class GpuShapeError extends GpuError {
  static override readonly code: string = "GPU_SHAPE";
}

/** The engine (or a recorder) was used after `close()` / `submit()`. */
export class GpuClosedError extends GpuError {
  static override readonly code: string = "GPU_CLOSED";
}

/**
 * A kernel was dispatched with a binding or parameter it does not declare (`unknown`), without
 * one it declares (`missing`), or with a value of the wrong type (`dtype`): a tensor whose dtype
 * does not match the binding's element type, or a parameter that is not a number of its type.
 */
export class KernelArgumentError extends GpuShapeError {
  static override readonly code: string = "KERNEL_ARGUMENT";
  static readonly fields = z.object({
    kernel: z.string(),
    argument: z.string(),
    reason: z.enum(["missing", "unknown", "dtype"]),
  });
  constructor(
    readonly kernel: string,
    readonly argument: string,
    readonly reason: "missing" | "unknown" | "dtype",
    message: string,
  ) {
    super(`${kernel}: ${message}`);
  }
}

/**
 * A dispatch whose invocations could run more loop passes than `MAX_INVOCATION_LOOP` (see
 * kernel.ts): lavapipe silently stops an invocation's loops there, so the kernel refuses the
 * shape instead of computing a wrong result. `bound` is the kernel's declared worst case for
 * the dispatch's parameters, `limit` the bound it exceeds.
 */
export class KernelLoopBoundError extends GpuShapeError {
  static override readonly code: string = "KERNEL_LOOP_BOUND";
  static readonly fields = z.object({ kernel: z.string(), bound: z.number(), limit: z.number() });
  constructor(
    readonly kernel: string,
    readonly bound: number,
    readonly limit: number,
    message: string,
  ) {
    super(`${kernel}: ${message}`);
  }
}

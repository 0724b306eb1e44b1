/**
 * HD-PiSSA on actors: the public API.
 *
 * - The actor runtime (Ray-style actors over NATS) at the top level: `init`, `defineActor`, `z`,
 *   `tensor`, the collectives, the object store and the typed errors.
 * - The HD-PiSSA training actors and the fine-tuning job: `GpuWorker`, `Driver`, `runFinetune`.
 * - The model, the WebGPU engine and the training pieces, each under its own namespace:
 *   `model`, `gpu`, `train`.
 *
 * This module only re-exports; each part lives in its own folder (see README.md).
 * @module
 */

export * from "./runtime/mod.ts";
export { DomainError } from "./core/errors.ts";

export { GpuWorker, StepProtocolError, UpdateMissingError } from "./actors/gpu_worker.ts";
export { Driver, DriverCore, type DriverStep, TrainingError } from "./actors/driver.ts";
export { type JobIo, OutputFolderError, runFinetune, startSystem } from "./actors/job.ts";

export * as gpu from "./gpu/mod.ts";
export * as model from "./model/mod.ts";
export * as train from "./train/mod.ts";

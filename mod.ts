/**
 * HD-PiSSA on actors: the public API.
 *
 * - The actor runtime (Ray-style actors over NATS): `init`, `defineActor`, `z`, handles and
 *   supervision, the collectives, the object store, the tensor helpers and the typed errors.
 * - The HD-PiSSA training actors and the fine-tuning job: `GpuWorker`, `Driver`, `runFinetune`.
 * - The live dashboard of a system: `serveDashboard`, `runFinetuneWithDashboard`.
 * - The model, the WebGPU engine and the training pieces, each under its own namespace:
 *   `model`, `gpu`, `train`.
 *
 * ```ts
 * import { defineActor, init, z } from "@hd-pissa/hd-pissa";
 *
 * export const Greeter = defineActor({
 *   name: "Greeter",
 *   module: import.meta.url,
 *   init: z.object({ greeting: z.string() }),
 *   create: (input) => ({ greeting: input.greeting }),
 *   methods: {
 *     greet: { input: z.string(), output: z.string(), handler: (s, who) => `${s.greeting}, ${who}` },
 *   },
 * });
 *
 * const system = await init({ nodes: 2, allowModules: [import.meta.resolve("./")] });
 * const g = await system.spawn(Greeter, { greeting: "Hello" });
 * console.log(await g.greet("world"));
 * await system.shutdown();
 * ```
 *
 * This module only re-exports; each part lives in its own folder (see docs/architecture.md). The
 * runtime's wire-level pieces (frames, parts, checksums, raw connections, the embedded server) are
 * in `internal_mod.ts` (`@hd-pissa/hd-pissa/internal`), for tests and benchmarks; they may change
 * without notice.
 * @module
 */

export * from "./runtime/mod.ts";
export { DomainError } from "./core/errors.ts";

// The training actors and the fine-tuning job.
export { GpuWorker, StepProtocolError, UpdateMissingError } from "./actors/gpu_worker.ts";
export { Driver, TrainingError } from "./actors/driver.ts";
export { type JobIo, OutputFolderError, runFinetune, startSystem } from "./actors/job.ts";

// The live dashboard of a system and its runs.
export {
  type Dashboard,
  DashboardError,
  DashboardModel,
  type DashboardOptions,
  type DashboardState,
  dashboardStateSchema,
  runFinetuneWithDashboard,
  serveDashboard,
} from "./dashboard/mod.ts";

export * as gpu from "./gpu/mod.ts";
export * as model from "./model/mod.ts";
export * as train from "./train/mod.ts";

/**
 * The actor runtime: Ray-style actors over NATS, with Erlang-style supervision.
 *
 * ```ts
 * import { defineActor, init, z } from "./mod.ts";
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
 * const system = await init({ nodes: 2 });
 * const g = await system.spawn(Greeter, { greeting: "Hello" });
 * console.log(await g.greet("world"));
 * await system.shutdown();
 * ```
 * @module
 */
// Defining actors and handles.
export { z } from "zod";
export {
  type ActorContext,
  type ActorDef,
  type ActorHandle,
  type ActorMethods,
  type ActorRef,
  type ActorSpec,
  type AnyActorDef,
  type CallContext,
  type CallOptions,
  defineActor,
  type InitInput,
  isActorDef,
  type MethodSpec,
} from "./actor.ts";

// Systems, nodes, spawning and supervision.
export {
  child,
  init,
  type InitOptions,
  MAX_APP_EVENT_BYTES,
  type NodeInfo,
  type ReplaceBudget,
  type SpawnOptions,
  type Supervisor,
  supervisor,
  type SupervisorSpec,
  System,
  type SystemEvent,
} from "./system.ts";
export {
  type ActorSnapshot,
  actorSnapshotSchema,
  type EventRecord,
  eventRecord,
  eventRecordSchema,
  type NodeSnapshot,
  nodeSnapshotSchema,
  type SystemSnapshot,
  systemSnapshotSchema,
} from "./introspect.ts";
export type { ActorLoad, AppEvent } from "./protocol.ts";
export type { ChildOptions, Strategy } from "./supervisor.ts";
export type { NodeSpec } from "./local_nodes.ts";
export type { Resources } from "./protocol.ts";
export type { EmbeddedServer, EmbeddedServerOptions } from "./nats_server.ts";
export { type Credentials, natsEnvCredentials, type TlsSettings } from "./connect.ts";

// Collectives and the object store.
export {
  Collectives,
  type Gathering,
  type GatherOptions,
  type Receiver,
  type SubscribeOptions,
} from "./collectives.ts";
export { type ObjectEntry, ObjectStore } from "./objects.ts";
export { bundleModule, type ModuleBundle, type ShippedModule } from "./bundles.ts";

// Tensors in messages.
export {
  type DType,
  dtypeOf,
  shapeOf,
  tensor,
  type TensorArray,
  type TensorOptions,
  withShape,
} from "./tensor.ts";

// Errors.
export {
  ActorDiedError,
  ActorExistsError,
  ActorInitError,
  ActorNotFoundError,
  ActorSystemError,
  ActorTypeMismatchError,
  BundleDigestError,
  BundleError,
  BundleNotAllowedError,
  CallCancelledError,
  CallTimeoutError,
  CollectiveTimeoutError,
  type DeathReason,
  EncodeError,
  FrameError,
  InsufficientResourcesError,
  InvalidArgumentError,
  MailboxFullError,
  ModuleNotAllowedError,
  NodeStartError,
  NoNodeAvailableError,
  ObjectStoreError,
  RemoteError,
  SchemaError,
  ServerStartError,
  StaleIncarnationError,
  SupervisorFailedError,
  SystemClosedError,
  UnknownActorTypeError,
  UnknownMethodError,
} from "./errors.ts";
export type { ErrorClass } from "./declared_errors.ts";

/**
 * Defining actors: `defineActor` and the types a handle is inferred from.
 *
 * ```ts
 * export const Counter = defineActor({
 *   name: "Counter",
 *   module: import.meta.url,
 *   init: z.object({ start: z.number() }),
 *   create: (input) => ({ n: input.start }),
 *   methods: {
 *     add: { input: z.number(), output: z.number(), handler: (s, x) => (s.n += x) },
 *   },
 * });
 * const c = await system.spawn(Counter, { start: 1 });
 * const n: number = await c.add(2);
 * ```
 * @module
 */
import type { NatsConnection } from "@nats-io/nats-core";
import type { z } from "zod";
import type { Collectives } from "./collectives.ts";
import { checkErrorClasses, type ErrorClass } from "./declared_errors.ts";
import { InvalidArgumentError } from "./errors.ts";
import type { ObjectStore } from "./objects.ts";
import type { System } from "./system.ts";

/** Any zod schema. */
export type Schema = z.ZodType;

/** Identity of an actor, stable across restarts. Serialisable: pass it in messages. */
export interface ActorRef {
  /** Subject token of the actor: its name when it has one. */
  id: string;
  name?: string;
  /** The actor type (`defineActor`'s `name`). */
  type: string;
  /** Module URL the type is loaded from on other nodes. */
  module?: string;
}

/** What an actor's code can reach: who it is, the system, NATS and the collectives. */
export interface ActorContext {
  /** This actor, with its current incarnation and node. */
  readonly self: ActorRef & { inc: number; node: string };
  /** The system of the hosting process: spawn, look up and call other actors from here. */
  readonly system: System;
  /** The raw NATS connection of the hosting process. */
  readonly nc: NatsConnection;
  /** Prefix for application subjects of this system, e.g. `<namespace>.step.3.delta.1`. */
  readonly namespace: string;
  /** Gather / broadcast / all-gather on subjects. */
  readonly collectives: Collectives;
  /** The system's object store for large blobs (opened on first use). */
  objects(): Promise<ObjectStore>;
  /**
   * Publishes an application event with this actor as its source (see `System.emit`): every
   * process of the system that listens gets it, e.g. a dashboard.
   */
  emit(kind: string, data?: unknown): void;
  /** Aborted when this actor instance stops (stop, kill, node shutdown). */
  readonly stopped: AbortSignal;
}

/** The context of one call. */
export interface CallContext extends ActorContext {
  /** Aborted when the call times out or the caller cancels it, or the actor stops. */
  readonly signal: AbortSignal;
  /** The method being called. */
  readonly method: string;
}

/** One method: zod schemas for its input and output, and the handler. */
export interface MethodSpec<S, I extends Schema, O extends Schema> {
  input: I;
  output: O;
  /** Runs one call at a time, in mailbox order; receives the actor's state. */
  handler(state: S, input: z.output<I>, ctx: CallContext): z.input<O> | Promise<z.input<O>>;
}

/** The methods of an actor, keyed by name. */
export type MethodSpecs<S, I extends Record<string, Schema>, O extends Record<string, Schema>> = {
  [K in keyof I & keyof O]: MethodSpec<S, I[K], O[K]>;
};

/** What `defineActor` takes. */
export interface ActorSpec<
  IS extends Schema,
  S,
  I extends Record<string, Schema>,
  O extends Record<string, Schema>,
> {
  /** The actor type's name; unique within its module. */
  name: string;
  /**
   * URL of the module that exports this definition (usually `import.meta.url`), so that node
   * processes can import it (from their allow-list only). Without it the type can only run in
   * the process that defines it.
   */
  module?: string;
  /**
   * Digest (`sha256:<hex>`) of a module bundle that holds `module` (see `System.shipModule`):
   * nodes then import this type from that bundle, fetched from the object store, instead of from
   * `module`'s URL. Set by the shipped bundle's `actor(def)`.
   */
  bundle?: string;
  /** Schema of the constructor input. */
  init: IS;
  /** The constructor: builds the actor's state (may be async, e.g. acquiring a device). */
  create(input: z.output<IS>, ctx: ActorContext): S | Promise<S>;
  /** Frees the state's resources when the actor stops (not called when its process dies). */
  close?(state: S, ctx: ActorContext): void | Promise<void>;
  methods: MethodSpecs<S, I, O>;
  /**
   * The error classes the methods may throw that callers branch on. An exception of exactly one
   * of these classes reaches the caller as an instance of it, with its message, stack and data
   * fields (described by the class's `static fields` zod object), so `instanceof` works there for
   * the class and its bases; any other exception arrives as a RemoteError. One list for the actor:
   * its methods share its state, and with it the ways they fail.
   */
  errors?: readonly ErrorClass[];
}

const BRAND = Symbol.for("actors.def");

/** An actor definition, as returned by {@link defineActor}. */
export type ActorDef<
  IS extends Schema = Schema,
  S = unknown,
  I extends Record<string, Schema> = Record<string, Schema>,
  O extends Record<string, Schema> = Record<string, Schema>,
> = Readonly<ActorSpec<IS, S, I, O>> & { readonly [BRAND]: true };

/** Any actor definition. */
// deno-lint-ignore no-explicit-any
export type AnyActorDef = ActorDef<Schema, any, any, any>;

/** Options of one call. */
export interface CallOptions {
  /**
   * Default 30 000 ms. A call still queued at its deadline is dropped; a running one is aborted;
   * one still held back by this process (the mailbox stayed full) fails with MailboxFullError.
   */
  timeoutMs?: number;
  /** Cancels the call (the caller gets CallCancelledError). */
  signal?: AbortSignal;
  /**
   * Fail at once instead of waiting: while the actor restarts, with ActorDiedError; while its
   * mailbox is full (the call would be held back), with MailboxFullError.
   */
  failFast?: boolean;
  /**
   * Most calls this process may have pending to the actor (sent, or held back while its mailbox
   * is full) when this call is made; past it the call fails at once with MailboxFullError.
   * Default unlimited: held calls cost only their own memory.
   */
  maxPendingCalls?: number;
  /**
   * The method gives the same result when run twice (or its repeats are harmless): the call is
   * then sent again when a connection on its way reconnected, since the request or its reply
   * may have been lost with the server that went away. The actor still runs it once: a copy
   * that arrives while the call is queued or running is dropped, one that arrives after it was
   * answered gets the same answer again (runtime/instance.ts). Default false (a call is sent
   * once).
   */
  idempotent?: boolean;
}

type MethodFn<In, Out> = undefined extends In ? (input?: In, options?: CallOptions) => Promise<Out>
  : (input: In, options?: CallOptions) => Promise<Out>;

/** The typed methods of a handle to actor definition `D`. */
export type ActorMethods<D> = D extends ActorDef<Schema, unknown, infer I, infer O> ? {
    readonly [K in keyof I & keyof O & string]: MethodFn<z.input<I[K]>, z.output<O[K]>>;
  }
  : never;

/** A handle to an actor: its methods, and its ref. Survives the actor's restarts. */
export type ActorHandle<D> = ActorMethods<D> & { readonly ref: ActorRef };

/** The constructor input `D` takes. */
export type InitInput<D> = D extends ActorDef<infer IS> ? z.input<IS> : never;

const RESERVED = new Set(["ref", "then", "constructor", "toJSON", "__proto__", "prototype"]);

/**
 * Defines an actor type. TypeScript infers the state from `create` and every method's input and
 * output from its zod schemas, so handles are fully typed.
 */
export function defineActor<
  IS extends Schema,
  S,
  I extends Record<string, Schema>,
  O extends Record<string, Schema>,
>(spec: ActorSpec<IS, S, I, O>): ActorDef<IS, S, I, O> {
  if (typeof spec.name !== "string" || !/^[A-Za-z0-9_.-]{1,128}$/.test(spec.name)) {
    throw new InvalidArgumentError(`actor type name ${JSON.stringify(spec.name)} is invalid`);
  }
  if (spec.module !== undefined) {
    try {
      new URL(spec.module);
    } catch {
      throw new InvalidArgumentError(`module of ${spec.name} is not a URL: ${spec.module}`);
    }
  }
  if (spec.bundle !== undefined && !/^sha256:[0-9a-f]{64}$/.test(spec.bundle)) {
    throw new InvalidArgumentError(
      `bundle of ${spec.name} is not a sha256: digest: ${spec.bundle}`,
    );
  }
  for (const m of Object.keys(spec.methods)) {
    if (RESERVED.has(m)) {
      throw new InvalidArgumentError(`${spec.name}: method name "${m}" is reserved`);
    }
    const ms = (spec.methods as Record<string, MethodSpec<S, Schema, Schema>>)[m];
    if (!ms || typeof ms.handler !== "function" || !ms.input || !ms.output) {
      throw new InvalidArgumentError(`${spec.name}.${m} needs input, output and handler`);
    }
  }
  const errors = spec.errors === undefined ? {} : {
    errors: checkErrorClasses(spec.name, spec.errors),
  };
  return Object.freeze({ ...spec, ...errors, [BRAND]: true as const });
}

/** True for values made by {@link defineActor}. */
export function isActorDef(v: unknown): v is AnyActorDef {
  return typeof v === "object" && v !== null && (v as Record<symbol, unknown>)[BRAND] === true;
}

/**
 * Typed errors of the actor runtime, and their wire form.
 *
 * Every error the runtime raises is an {@link ActorSystemError} subclass with a stable `code`, so
 * callers can branch with `instanceof` and errors survive a trip over NATS: the actor side turns
 * an error into a {@link WireError}, the caller side turns it back into the same class.
 * @module
 */

/** Serialisable form of an error as it travels in a reply. */
export interface WireError {
  code: string;
  name: string;
  message: string;
  stack?: string;
  data?: Record<string, unknown>;
}

/** Base class of every error raised by the runtime. */
export class ActorSystemError extends Error {
  /** Stable machine-readable code, e.g. `"ACTOR_DIED"`. */
  readonly code: string = "ACTOR_SYSTEM";
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
  /** Extra fields carried over the wire (reconstructed on the other side). */
  protected wireData(): Record<string, unknown> | undefined {
    return undefined;
  }
  /** The error as it travels in a reply. */
  toWire(): WireError {
    return {
      code: this.code,
      name: this.name,
      message: this.message,
      stack: this.stack,
      data: this.wireData(),
    };
  }
}

/** Why an actor instance ended. */
export type DeathReason =
  | "node" // its node process stopped sending heartbeats
  | "stopped" // stopped on request
  | "killed" // killed on request (a crash, as far as supervision is concerned)
  | "owner" // the process that spawned it died
  | "init" // its constructor failed on a restart
  | "budget" // it died and its restart budget is spent
  | "shutdown"; // the system is shutting down

/** The actor died (or was stopped) while a call was pending or before it could be delivered. */
export class ActorDiedError extends ActorSystemError {
  override readonly code = "ACTOR_DIED";
  constructor(
    readonly actor: string,
    readonly reason: DeathReason,
    detail?: string,
    options?: ErrorOptions,
  ) {
    super(`actor ${actor} died (${reason})${detail ? `: ${detail}` : ""}`, options);
  }
  protected override wireData() {
    return { actor: this.actor, reason: this.reason };
  }
}

/** The call did not complete within its timeout. */
export class CallTimeoutError extends ActorSystemError {
  override readonly code = "CALL_TIMEOUT";
  constructor(readonly actor: string, readonly method: string, readonly timeoutMs: number) {
    super(`call ${actor}.${method} timed out after ${timeoutMs} ms`);
  }
  protected override wireData() {
    return { actor: this.actor, method: this.method, timeoutMs: this.timeoutMs };
  }
}

/** The caller cancelled the call with its AbortSignal. */
export class CallCancelledError extends ActorSystemError {
  override readonly code = "CALL_CANCELLED";
  constructor(readonly actor: string, readonly method: string) {
    super(`call ${actor}.${method} was cancelled`);
  }
  protected override wireData() {
    return { actor: this.actor, method: this.method };
  }
}

/** The actor's mailbox was full; the call was rejected without being queued. */
export class MailboxFullError extends ActorSystemError {
  override readonly code = "MAILBOX_FULL";
  constructor(readonly actor: string, readonly capacity: number) {
    super(`mailbox of actor ${actor} is full (${capacity} calls queued)`);
  }
  protected override wireData() {
    return { actor: this.actor, capacity: this.capacity };
  }
}

/** An exception thrown by an actor's code, carrying the remote name, message and stack. */
export class RemoteError extends ActorSystemError {
  override readonly code = "REMOTE";
  constructor(
    readonly actor: string,
    readonly method: string,
    readonly remoteName: string,
    readonly remoteMessage: string,
    readonly remoteStack: string | undefined,
  ) {
    super(`${actor}.${method} threw ${remoteName}: ${remoteMessage}`);
  }
  protected override wireData() {
    return {
      actor: this.actor,
      method: this.method,
      remoteName: this.remoteName,
      remoteMessage: this.remoteMessage,
      remoteStack: this.remoteStack,
    };
  }
}

/** Which value failed validation. */
export type SchemaSide = "init" | "input" | "output" | "message" | "error";

/** A value did not match its zod schema (on the caller's side or on the actor's side). */
export class SchemaError extends ActorSystemError {
  override readonly code = "SCHEMA";
  constructor(
    readonly where: string,
    readonly side: SchemaSide,
    readonly issues: string,
    readonly remote = false,
    options?: ErrorOptions,
  ) {
    super(
      `${side} of ${where} does not match its schema${
        remote ? " (checked remotely)" : ""
      }: ${issues}`,
      options,
    );
  }
  protected override wireData() {
    return { where: this.where, side: this.side, issues: this.issues };
  }
}

/** A binary frame or chunk was malformed, truncated or failed its checksum. */
export class FrameError extends ActorSystemError {
  override readonly code = "FRAME";
}

/** A value inside a message cannot be encoded (e.g. a Float64Array, a function, a cycle). */
export class EncodeError extends ActorSystemError {
  override readonly code = "ENCODE";
}

/** The requested actor type is not exported by its module. */
export class UnknownActorTypeError extends ActorSystemError {
  override readonly code = "UNKNOWN_ACTOR_TYPE";
  constructor(readonly type: string, readonly module: string | undefined, detail?: string) {
    super(
      `unknown actor type ${type}${module ? ` in ${module}` : ""}${detail ? `: ${detail}` : ""}`,
    );
  }
  protected override wireData() {
    return { type: this.type, module: this.module };
  }
}

/** A module URL is outside the node's allow-list; it was not imported. */
export class ModuleNotAllowedError extends ActorSystemError {
  override readonly code = "MODULE_NOT_ALLOWED";
  constructor(readonly module: string, readonly allowed: readonly string[]) {
    super(`module ${module} is not in this node's allow-list (${allowed.join(", ")})`);
  }
  protected override wireData() {
    return { module: this.module, allowed: [...this.allowed] };
  }
}

/**
 * A spawn named a module bundle whose digest is not in the node's own allow-list; nothing was
 * fetched or imported.
 */
export class BundleNotAllowedError extends ActorSystemError {
  override readonly code = "BUNDLE_NOT_ALLOWED";
  constructor(readonly digest: string, readonly node: string) {
    super(
      `module bundle ${digest} is not allowed on node ${node} (start it with --allow-bundle ${digest})`,
    );
  }
  protected override wireData() {
    return { digest: this.digest, node: this.node };
  }
}

/** The bytes of a module bundle do not hash to the digest it was asked for; nothing was imported. */
export class BundleDigestError extends ActorSystemError {
  override readonly code = "BUNDLE_DIGEST";
  constructor(readonly expected: string, readonly actual: string) {
    super(`module bundle ${expected}: the bytes fetched hash to ${actual}; refused`);
  }
  protected override wireData() {
    return { expected: this.expected, actual: this.actual };
  }
}

/** A module bundle cannot be built, is malformed, or cannot be fetched or unpacked. */
export class BundleError extends ActorSystemError {
  override readonly code = "BUNDLE";
}

/** No actor with this name is known to the system. */
export class ActorNotFoundError extends ActorSystemError {
  override readonly code = "ACTOR_NOT_FOUND";
  constructor(readonly actor: string) {
    super(`no actor named ${actor} in this system`);
  }
  protected override wireData() {
    return { actor: this.actor };
  }
}

/** A live actor already has this name. */
export class ActorExistsError extends ActorSystemError {
  override readonly code = "ACTOR_EXISTS";
  constructor(readonly actor: string) {
    super(`an actor named ${actor} already exists in this system`);
  }
  protected override wireData() {
    return { actor: this.actor };
  }
}

/** The actor found under a name has a different type than the definition asked for. */
export class ActorTypeMismatchError extends ActorSystemError {
  override readonly code = "ACTOR_TYPE_MISMATCH";
  constructor(readonly actor: string, readonly expected: string, readonly actual: string) {
    super(`actor ${actor} is a ${actual}, not a ${expected}`);
  }
}

/** The actor's constructor (`create`) failed. */
export class ActorInitError extends ActorSystemError {
  override readonly code = "ACTOR_INIT";
  constructor(readonly actor: string, override readonly cause: Error) {
    super(`actor ${actor} failed to start: ${cause.message}`, { cause });
  }
  protected override wireData() {
    const c = this.cause;
    return {
      actor: this.actor,
      cause: c instanceof ActorSystemError
        ? c.toWire()
        : { code: "REMOTE", name: c.name, message: c.message, stack: c.stack },
    };
  }
}

/** No node has the resources an actor asks for (within the placement timeout). */
export class NoNodeAvailableError extends ActorSystemError {
  override readonly code = "NO_NODE_AVAILABLE";
}

/** A node refused a spawn because its free resources no longer suffice. */
export class InsufficientResourcesError extends ActorSystemError {
  override readonly code = "INSUFFICIENT_RESOURCES";
}

/** A call reached an older or newer incarnation of the actor than the caller expected. */
export class StaleIncarnationError extends ActorSystemError {
  override readonly code = "STALE_INCARNATION";
  constructor(readonly actor: string, readonly current: number) {
    super(`actor ${actor} is now incarnation ${current}`);
  }
  protected override wireData() {
    return { actor: this.actor, current: this.current };
  }
}

/** The method does not exist on the actor. */
export class UnknownMethodError extends ActorSystemError {
  override readonly code = "UNKNOWN_METHOD";
  constructor(readonly actor: string, readonly method: string) {
    super(`actor ${actor} has no method ${method}`);
  }
  protected override wireData() {
    return { actor: this.actor, method: this.method };
  }
}

/** A supervisor spent its restart budget and has no parent to escalate to. */
export class SupervisorFailedError extends ActorSystemError {
  override readonly code = "SUPERVISOR_FAILED";
}

/** Starting the embedded nats-server failed (missing binary, bad config, ...). */
export class ServerStartError extends ActorSystemError {
  override readonly code = "SERVER_START";
}

/** A local node process failed to start or exited early. */
export class NodeStartError extends ActorSystemError {
  override readonly code = "NODE_START";
}

/** A gather or all-gather did not receive every part in time. */
export class CollectiveTimeoutError extends ActorSystemError {
  override readonly code = "COLLECTIVE_TIMEOUT";
  constructor(readonly subject: string, readonly missing: number[]) {
    super(
      missing.length
        ? `collective on ${subject} timed out; missing parts: ${missing.join(", ")}`
        : `nothing arrived on ${subject} in time`,
    );
  }
}

/** An object in the object store is missing or its digest does not match. */
export class ObjectStoreError extends ActorSystemError {
  override readonly code = "OBJECT_STORE";
}

/** The system (or the connection under it) is closed. */
export class SystemClosedError extends ActorSystemError {
  override readonly code = "SYSTEM_CLOSED";
}

/** Invalid arguments to a runtime function (bad name, bad option, ...). */
export class InvalidArgumentError extends ActorSystemError {
  override readonly code = "INVALID_ARGUMENT";
}

/** Converts any thrown value into its wire form. */
export function toWireError(err: unknown): WireError {
  if (err instanceof ActorSystemError) return err.toWire();
  if (err instanceof Error) {
    return { code: "REMOTE", name: err.name, message: err.message, stack: err.stack };
  }
  return { code: "REMOTE", name: "Error", message: String(err) };
}

function str(v: unknown, fallback = ""): string {
  return typeof v === "string" ? v : fallback;
}

/**
 * Rebuilds a typed error from its wire form. Unknown codes and plain exceptions become a
 * {@link RemoteError} naming the actor and method the reply came from.
 */
export function fromWireError(w: WireError, actor: string, method: string): ActorSystemError {
  const d = w.data ?? {};
  let e: ActorSystemError;
  switch (w.code) {
    case "ACTOR_DIED":
      e = new ActorDiedError(str(d.actor, actor), str(d.reason, "node") as DeathReason);
      break;
    case "CALL_TIMEOUT":
      e = new CallTimeoutError(str(d.actor, actor), str(d.method, method), Number(d.timeoutMs));
      break;
    case "CALL_CANCELLED":
      e = new CallCancelledError(actor, method);
      break;
    case "MAILBOX_FULL":
      e = new MailboxFullError(str(d.actor, actor), Number(d.capacity));
      break;
    case "SCHEMA":
      e = new SchemaError(str(d.where), str(d.side, "input") as SchemaSide, str(d.issues), true);
      break;
    case "FRAME":
      e = new FrameError(w.message);
      break;
    case "ENCODE":
      e = new EncodeError(w.message);
      break;
    case "UNKNOWN_ACTOR_TYPE":
      e = new UnknownActorTypeError(
        str(d.type),
        d.module === undefined ? undefined : str(d.module),
      );
      e.message = w.message;
      break;
    case "MODULE_NOT_ALLOWED":
      e = new ModuleNotAllowedError(str(d.module), Array.isArray(d.allowed) ? d.allowed : []);
      break;
    case "BUNDLE_NOT_ALLOWED":
      e = new BundleNotAllowedError(str(d.digest), str(d.node));
      break;
    case "BUNDLE_DIGEST":
      e = new BundleDigestError(str(d.expected), str(d.actual));
      break;
    case "BUNDLE":
      e = new BundleError(w.message);
      break;
    case "ACTOR_NOT_FOUND":
      e = new ActorNotFoundError(str(d.actor, actor));
      break;
    case "ACTOR_EXISTS":
      e = new ActorExistsError(str(d.actor, actor));
      break;
    case "ACTOR_INIT": {
      const c = d.cause as WireError | undefined;
      const cause = c ? fromWireError(c, actor, "create") : new Error(w.message);
      e = new ActorInitError(str(d.actor, actor), cause);
      break;
    }
    case "INSUFFICIENT_RESOURCES":
      e = new InsufficientResourcesError(w.message);
      break;
    case "STALE_INCARNATION":
      e = new StaleIncarnationError(str(d.actor, actor), Number(d.current));
      break;
    case "UNKNOWN_METHOD":
      e = new UnknownMethodError(str(d.actor, actor), str(d.method, method));
      break;
    case "INVALID_ARGUMENT":
      e = new InvalidArgumentError(w.message);
      break;
    case "REMOTE":
      if (d.remoteName !== undefined) {
        e = new RemoteError(
          str(d.actor, actor),
          str(d.method, method),
          str(d.remoteName),
          str(d.remoteMessage),
          d.remoteStack === undefined ? undefined : str(d.remoteStack),
        );
      } else {
        e = new RemoteError(actor, method, w.name, w.message, w.stack);
      }
      break;
    default:
      e = new RemoteError(actor, method, w.name, w.message, w.stack);
  }
  return e;
}

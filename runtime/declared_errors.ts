/**
 * Errors an actor declares: they cross the actor boundary as their own class.
 *
 * An actor lists the error classes its methods may throw (`defineActor({ errors: [...] })`).
 * When a handler throws an instance of exactly one of them, the reply carries, besides what every
 * exception carries (name, message, stack: a {@link RemoteError}), the class's name and the
 * error's own data fields (its own enumerable properties). The caller's handle, made from the same
 * definition, checks them against the class's `fields` schema and re-creates an instance of the
 * class, prototype chain included (`instanceof` holds for the class and its bases), with the
 * remote name, message and stack.
 *
 * Everything else still arrives as a RemoteError: undeclared errors, a subclass that is not itself
 * declared (it does not turn into its base), runtime errors of nested calls, a class the caller's
 * definition does not list. A declared error whose payload does not check arrives as a
 * {@link SchemaError} (side `"error"`) whose `cause` is the RemoteError.
 * @module
 */
import { z } from "zod";
import {
  ActorSystemError,
  fromWireError,
  InvalidArgumentError,
  RemoteError,
  SchemaError,
  type WireError,
} from "./errors.ts";
import { issuesOf } from "./protocol.ts";

/**
 * An error class an actor may declare: an `Error` subclass (not one of the runtime's own), with a
 * `static fields` zod object describing the data fields its instances carry (none without one).
 */
// deno-lint-ignore no-explicit-any
export type ErrorClass = (abstract new (...args: any[]) => Error) & {
  readonly fields?: z.ZodObject;
};

/** What a reply adds for an error of a declared class. */
export interface DeclaredWire {
  /** The declared class's name. */
  type: string;
  /** The error's own data fields, as JSON; null when they could not be encoded. */
  fields: Record<string, unknown> | null;
}

/** Checks the `errors` of an actor definition; returns a frozen copy. */
export function checkErrorClasses(actor: string, errors: unknown): readonly ErrorClass[] {
  if (!Array.isArray(errors)) {
    throw new InvalidArgumentError(`${actor}: errors must be an array of error classes`);
  }
  const names = new Set<string>();
  for (const c of errors) {
    if (typeof c !== "function" || !(c.prototype instanceof Error)) {
      throw new InvalidArgumentError(`${actor}: errors lists ${String(c)}, not an Error class`);
    }
    if (c === ActorSystemError || c.prototype instanceof ActorSystemError) {
      throw new InvalidArgumentError(
        `${actor}: ${c.name} is one of the runtime's errors; they travel by their own means`,
      );
    }
    if (names.has(c.name)) {
      throw new InvalidArgumentError(`${actor}: errors lists two classes named ${c.name}`);
    }
    names.add(c.name);
    const fields = (c as ErrorClass).fields;
    if (fields !== undefined && !(fields instanceof z.ZodObject)) {
      throw new InvalidArgumentError(`${actor}: ${c.name}.fields must be a zod object`);
    }
  }
  return Object.freeze([...errors]);
}

/** Properties every error has; they travel as the RemoteError's name, message and stack. */
const STANDARD = new Set(["name", "message", "stack", "cause"]);

/**
 * The actor's side: the declared class `err` is an instance of (exactly, not a subclass of), and
 * its own data fields; undefined when `err` is not of a declared class.
 */
export function declaredWire(
  err: unknown,
  errors: readonly ErrorClass[] | undefined,
): DeclaredWire | undefined {
  if (!errors?.length || !(err instanceof Error)) return undefined;
  const proto = Object.getPrototypeOf(err);
  const cls = errors.find((c) => c.prototype === proto);
  if (!cls) return undefined;
  const own: Record<string, unknown> = {};
  for (const k of Object.keys(err)) {
    if (!STANDARD.has(k)) own[k] = (err as unknown as Record<string, unknown>)[k];
  }
  let fields: Record<string, unknown> | null;
  try {
    // The reply's metadata is JSON: what does not survive JSON must not break the reply.
    fields = JSON.parse(JSON.stringify(own));
  } catch {
    fields = null;
  }
  return { type: cls.name, fields };
}

const wireErrorSchema = z.object({
  code: z.string(),
  name: z.string(),
  message: z.string(),
  stack: z.string().optional(),
  data: z.record(z.string(), z.unknown()).optional(),
});

const declaredSchema = z.object({
  remoteName: z.string(),
  remoteMessage: z.string(),
  remoteStack: z.string().optional(),
  declared: z.object({
    type: z.string(),
    fields: z.record(z.string(), z.unknown()).nullable(),
  }),
});

/**
 * The caller's side: the error a reply names, typed. Runtime errors and undeclared exceptions as
 * {@link fromWireError} makes them; an exception of a class in `errors` as that class; a malformed
 * error as a {@link SchemaError} (side `"error"`) on `where` (`<type>.<method>`).
 */
export function errorOfReply(
  raw: unknown,
  actor: string,
  method: string,
  errors?: readonly ErrorClass[],
  where = `${actor}.${method}`,
): Error {
  const w = wireErrorSchema.safeParse(raw);
  if (!w.success) {
    return new SchemaError(where, "error", `the reply's error: ${issuesOf(w.error)}`);
  }
  const e = fromWireError(w.data as WireError, actor, method);
  const data = w.data.data;
  if (!(e instanceof RemoteError) || !errors?.length || data?.declared === undefined) return e;
  return rebuild(e, data, errors, where);
}

function rebuild(
  remote: RemoteError,
  data: Record<string, unknown>,
  errors: readonly ErrorClass[],
  where: string,
): Error {
  const bad = (issues: string) => new SchemaError(where, "error", issues, false, { cause: remote });
  const p = declaredSchema.safeParse(data);
  if (!p.success) return bad(issuesOf(p.error));
  const { remoteName, remoteMessage, remoteStack, declared } = p.data;
  const cls = errors.find((c) => c.name === declared.type);
  if (!cls) return remote; // the actor declares it, this caller's definition does not
  if (declared.fields === null) return bad(`${cls.name}: its fields could not be encoded`);
  const schema = cls.fields;
  const extra = Object.keys(declared.fields).filter((k) =>
    !schema || !Object.hasOwn(schema.shape, k)
  );
  if (extra.length) {
    return bad(`${cls.name} carries fields its class does not describe: ${extra.join(", ")}`);
  }
  let fields: Record<string, unknown> = {};
  if (schema) {
    const q = schema.safeParse(declared.fields);
    if (!q.success) return bad(`${cls.name}: ${issuesOf(q.error)}`);
    // A field JSON left out (undefined) is still the instance's own, as its constructor made it.
    fields = {
      ...Object.fromEntries(Object.keys(schema.shape).map((k) => [k, undefined])),
      ...q.data,
    };
  }
  // An Error made with the class as new.target: a real error object with the class's prototype,
  // without running a constructor whose parameters the wire does not know.
  const err = Reflect.construct(Error, [remoteMessage], cls) as Error;
  err.name = remoteName;
  Object.assign(err, fields);
  err.stack = remoteStack ?? `${remoteName}: ${remoteMessage}`;
  return err;
}

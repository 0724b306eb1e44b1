/**
 * The base of the project's own errors (gpu/, model/, train/, actors/): the class's name for
 * people and a stable `code` for programs, so that every error class only states what is its own.
 *
 * This is the bottom layer: it imports nothing, and everything may import it. The actor runtime
 * keeps its own `ActorSystemError`s (runtime/errors.ts), shaped the same way.
 * @module
 */

/**
 * A project error: `name` is the class's name (`instanceof` and the name agree), `code` is the
 * class's stable code, declared once per class:
 *
 * ```ts
 * export class CheckpointError extends DomainError {
 *   static override readonly code = "CHECKPOINT";
 * }
 * ```
 *
 * Data an error carries are its own fields (`readonly file: string`); an error class that an actor
 * declares describes them with a `static fields` zod object, so they cross the actor boundary too.
 */
export class DomainError extends Error {
  /** Stable machine-readable code of the class; every subclass declares its own. */
  static readonly code: string = "DOMAIN";

  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }

  /** The code of this error's class, e.g. `"CHECKPOINT"`. */
  get code(): string {
    return (this.constructor as typeof DomainError).code;
  }
}

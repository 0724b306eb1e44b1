/**
 * The training methods, by name. Adding a method is one file exporting a `TrainingMethod` and
 * one line here; `--method`, `--compare`, the messages' schemas and the reports follow from this
 * list. The order is the order of `--compare` and of its tables.
 * @module
 */
import { z } from "zod";
import { DomainError } from "../../core/errors.ts";
import { full } from "./full.ts";
import { hdPissa } from "./hd_pissa.ts";
import { lora } from "./lora.ts";
import type { TrainingMethod } from "./method.ts";
import { pissa } from "./pissa.ts";

const REGISTERED = [
  hdPissa,
  pissa,
  lora,
  full,
] as const;

/** The name of a registered method. */
export type Method = typeof REGISTERED[number]["name"];

/** Every registered method, in order. */
export const TRAINING_METHODS: readonly TrainingMethod<Method>[] = REGISTERED;

/** The names of the registered methods, in order. */
export const METHODS: readonly Method[] = REGISTERED.map((m) => m.name);

{
  const dup = METHODS.find((n, i) => METHODS.indexOf(n) !== i);
  if (dup) throw new Error(`two training methods are named "${dup}"`);
}

/** A method name that no registered method has. */
export class UnknownMethodError extends DomainError {
  static override readonly code: string = "UNKNOWN_METHOD";
  static readonly fields = z.object({ method: z.string(), known: z.array(z.string()) });
  readonly method: string;
  readonly known: readonly string[];
  constructor(method: string) {
    super(`unknown training method ${JSON.stringify(method)} (known: ${METHODS.join(", ")})`);
    this.method = method;
    this.known = METHODS;
  }
}

/** The registered method of that name, or undefined (e.g. a report written by another build). */
export function findMethod(name: string): TrainingMethod<Method> | undefined {
  return TRAINING_METHODS.find((m) => m.name === name);
}

/** The registered method of that name; throws UnknownMethodError otherwise. */
export function getMethod(name: string): TrainingMethod<Method> {
  const m = findMethod(name);
  if (!m) throw new UnknownMethodError(name);
  return m;
}

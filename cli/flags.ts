/**
 * Command-line flags declared once, in a table: each flag's type, default, range, help and
 * group. From the table come the options' TypeScript type (flag `batch-size` → field
 * `batchSize`), the defaults, the usage text, the parser (node:util `parseArgs` underneath), a
 * zod schema of the parsed options, and the subsets marked in the table (the flags that define a
 * run, those that travel to workers, those a summary shows).
 *
 * ```ts
 * const FLAGS = defineFlags({
 *   name: "tool",
 *   usage: "deno run tool.ts [flags]",
 *   flags: {
 *     steps: { type: "int", default: 100, min: 1, help: "optimizer steps" },
 *     "batch-size": { type: "int", default: 8, min: 1, help: "examples per step" },
 *   },
 * });
 * const o = FLAGS.main(); // o.steps, o.batchSize; --help prints the usage, a bad flag exits 2
 * ```
 *
 * Knows nothing about what the flags mean; it sits at the bottom layer so that every CLI,
 * the runtime's node process included, can use it.
 * @module
 */
import { parseArgs } from "node:util";
import { z } from "zod";
import { DomainError } from "../core/errors.ts";

/** A flag that is unknown, malformed, missing, or impossible together with the others. */
export class FlagError extends DomainError {
  static override readonly code: string = "FLAG";
  static readonly fields = z.object({ flag: z.string().optional() });
  /** The flag concerned, without `--` (none for an unknown flag). */
  readonly flag?: string;
  constructor(message: string, flag?: string) {
    super(message);
    this.flag = flag;
  }
}

/** The options resolved so far, by field name; what a computed default reads. */
export type Resolved = Readonly<Record<string, unknown>>;

/** A default: a value, `null` (absent), or computed from the other resolved options. */
type Default<T> = T | null | ((o: Resolved) => T);

interface Common {
  /** One line (or a few words) for the usage text. */
  help: string;
  /** The heading the flag is listed under in the usage text. */
  group?: string;
  /** The value's placeholder in the usage text (`N`, `DIR`...). */
  metavar?: string;
  /** How the usage text shows the default, when the value itself would not do. */
  defaultText?: string;
  /** No default: leaving the flag out is an error. */
  required?: boolean;
  /** The flag decides what a run computes: a resumed run must have the same value. */
  definesRun?: boolean;
  /** The flag travels to the workers. */
  toWorkers?: boolean;
  /** The flag is among the few a summary of a run shows. */
  summary?: boolean;
  /**
   * The value is a secret (a token): `config` (what reports and checkpoints keep) and `redact`
   * (what travels in messages) never carry it.
   */
  secret?: boolean;
}

/** Free text; `none` names a word that means "absent" (`null`). */
export interface StringFlag extends Common {
  type: "string";
  default?: Default<string>;
  none?: string;
  nonEmpty?: boolean;
}
/** An integer; `min`/`max` inclusive. */
export interface IntFlag extends Common {
  type: "int";
  default?: Default<number>;
  min?: number;
  max?: number;
}
/** A finite number; `min`/`max` inclusive, `gt`/`lt` exclusive. */
export interface NumberFlag extends Common {
  type: "number";
  default?: Default<number>;
  min?: number;
  max?: number;
  gt?: number;
  lt?: number;
}
/**
 * A switch: present means true. With default true it is turned off by `--no-<name>`, which is
 * what the usage text lists (so `help` says what `--no-<name>` does). With `explicit`, it takes
 * a value instead: `--shuffle false`.
 */
export interface BooleanFlag extends Common {
  type: "boolean";
  default?: boolean;
  explicit?: boolean;
}
/** One of `choices`. */
export interface EnumFlag extends Common {
  type: "enum";
  choices: readonly string[];
  default?: Default<string>;
}
/**
 * Several values, comma-separated (`separator`), and with `repeat` also given by repeating the
 * flag. With `choices` it is a set of them, kept in the choices' order.
 */
export interface ListFlag extends Common {
  type: "list";
  choices?: readonly string[];
  default?: Default<readonly string[]>;
  separator?: string | null;
  repeat?: boolean;
  minItems?: number;
  /** What one item is called in an error (`unknown layer "wq"`); default "value". */
  itemName?: string;
}
/** Parsed by `parse`, which throws a `FlagError` (or any error, then reported with the flag). */
export interface CustomFlag<T = unknown> extends Common {
  type: "custom";
  parse(raw: string, flag: string): T;
  schema: z.ZodType<T>;
  default?: Default<T>;
}

export type FlagSpec =
  | StringFlag
  | IntFlag
  | NumberFlag
  | BooleanFlag
  | EnumFlag
  | ListFlag
  | CustomFlag;

export type FlagTable = Record<string, FlagSpec>;

/** `batch-size` → `batchSize`. */
export type Camel<S extends string> = S extends `${infer H}-${infer T}`
  ? `${H}${Capitalize<Camel<T>>}`
  : S;

type BaseValue<S> = S extends { type: "custom"; parse: (raw: string, flag: string) => infer R } ? R
  : S extends { type: "enum"; choices: readonly (infer C)[] } ? C
  : S extends { type: "list"; choices: readonly (infer C)[] } ? C[]
  : S extends { type: "list" } ? string[]
  : S extends { type: "int" | "number" } ? number
  : S extends { type: "boolean" } ? boolean
  : string;

type NullPart<S> = S extends { required: true } ? never
  : S extends { type: "boolean" | "list" } ? never
  : S extends { none: string } ? null
  : S extends { default: infer D } ? (D extends (o: Resolved) => unknown ? never : Extract<D, null>)
  : null;

/** The parsed value of a flag declared as `S`. */
export type ValueOf<S> = BaseValue<S> | NullPart<S>;

/** The parsed options of a table: one field per flag, named in camelCase. */
export type OptionsOf<F> = { -readonly [K in keyof F & string as Camel<K>]: ValueOf<F[K]> };

/** The marks a flag can carry that select a subset of the table. */
export type Mark = "definesRun" | "toWorkers" | "summary" | "secret";

type MarkedKeys<F, M extends Mark> = {
  [K in keyof F & string]: F[K] extends { [_ in M]: true } ? K : never;
}[keyof F & string];

/** The options of the flags marked `M`. */
export type MarkedOptions<F, M extends Mark> = {
  -readonly [K in MarkedKeys<F, M> as Camel<K>]: ValueOf<F[K]>;
};

export interface CliSpec<F extends FlagTable> {
  /** The program's name, at the start of an error line: `finetune: --rank must be ...`. */
  name: string;
  /** The usage line after `usage: `. */
  usage: string;
  /** What the program does, above the usage line. */
  about?: string;
  /** The order of the groups in the usage text (groups not named here follow). */
  groups?: readonly string[];
  /** Positional arguments, if the program takes any. */
  positionals?: { metavar: string; help: string };
  flags: F;
  /** Cross-flag checks, run on the resolved options; `given` names the flags on the line. */
  check?(o: OptionsOf<F>, given: ReadonlySet<string>): void;
}

export interface Parsed<O> {
  /** `--help` was given: print `usage` and stop (`options` are the defaults). */
  help: boolean;
  options: O;
  positionals: string[];
  /** The flags given on the command line. */
  given: Set<string>;
}

/** `batch-size` → `batchSize`. */
export function camelName(flag: string): string {
  return flag.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** `batch-size` → `batch_size`: a flag's key in a resolved config. */
export function snakeName(flag: string): string {
  return flag.replace(/-/g, "_");
}

// ---------------------------------------------------------------------------------------------
// The value parsers, also for custom flags

/** `raw` as a finite number, or a FlagError naming `--flag`. */
export function parseNumber(flag: string, raw: string): number {
  const x = Number(raw);
  if (raw.trim() === "" || !Number.isFinite(x)) {
    throw new FlagError(`--${flag} must be a number, got ${JSON.stringify(raw)}`, flag);
  }
  return x;
}

/** `x` checked against inclusive `min`/`max` and exclusive `gt`/`lt`. */
export function checkRange(
  flag: string,
  x: number,
  r: { min?: number; max?: number; gt?: number; lt?: number },
): number {
  const ok = (r.min === undefined || x >= r.min) && (r.max === undefined || x <= r.max) &&
    (r.gt === undefined || x > r.gt) && (r.lt === undefined || x < r.lt);
  if (!ok) throw new FlagError(`--${flag} must be ${describeRange(r)}, got ${x}`, flag);
  return x;
}

function describeRange(r: { min?: number; max?: number; gt?: number; lt?: number }): string {
  const lo = r.gt !== undefined ? `(${r.gt}` : r.min !== undefined ? `[${r.min}` : null;
  const hi = r.lt !== undefined ? `${r.lt})` : r.max !== undefined ? `${r.max}]` : null;
  if (lo !== null && hi !== null) return `in ${lo}, ${hi}`;
  if (lo !== null) {
    if (r.gt === 0) return "positive";
    return r.gt !== undefined ? `> ${r.gt}` : `>= ${r.min}`;
  }
  return r.lt !== undefined ? `< ${r.lt}` : `<= ${r.max}`;
}

/** `raw` as an integer in [min, max]. */
export function parseInteger(
  flag: string,
  raw: string,
  r: { min?: number; max?: number } = {},
): number {
  const x = parseNumber(flag, raw);
  const inRange = (r.min === undefined || x >= r.min) && (r.max === undefined || x <= r.max);
  if (!Number.isInteger(x) || !inRange) {
    const range = r.min !== undefined && r.max !== undefined
      ? ` in [${r.min}, ${r.max}]`
      : r.min !== undefined
      ? ` >= ${r.min}`
      : r.max !== undefined
      ? ` <= ${r.max}`
      : "";
    throw new FlagError(`--${flag} must be an integer${range}, got ${raw}`, flag);
  }
  return x;
}

/** `raw` if it is one of `choices`. */
export function parseChoice<C extends string>(flag: string, raw: string, choices: readonly C[]): C {
  if (!(choices as readonly string[]).includes(raw)) {
    throw new FlagError(
      `--${flag} must be one of ${choices.join(", ")}, got ${JSON.stringify(raw)}`,
      flag,
    );
  }
  return raw as C;
}

function parseValue(name: string, spec: FlagSpec, raw: string | string[]): unknown {
  const one = () => (Array.isArray(raw) ? raw[raw.length - 1] : raw);
  switch (spec.type) {
    case "string": {
      const v = one();
      if (spec.none !== undefined && v === spec.none) return null;
      if (spec.nonEmpty && v === "") throw new FlagError(`--${name} must not be empty`, name);
      return v;
    }
    case "int":
      return parseInteger(name, one(), spec);
    case "number":
      return checkRange(name, parseNumber(name, one()), spec);
    case "boolean":
      return parseChoice(name, one(), ["true", "false"]) === "true";
    case "enum":
      return parseChoice(name, one(), spec.choices);
    case "list":
      return parseList(name, spec, Array.isArray(raw) ? raw : [raw]);
    case "custom":
      try {
        return spec.parse(one(), name);
      } catch (e) {
        if (e instanceof FlagError) throw e;
        throw new FlagError(`--${name}: ${e instanceof Error ? e.message : e}`, name);
      }
  }
}

function parseList(name: string, spec: ListFlag, raws: string[]): string[] {
  const sep = spec.separator === undefined ? "," : spec.separator;
  const items = raws.flatMap((r) => sep === null ? [r] : r.split(sep))
    .map((t) => t.trim()).filter((t) => t !== "");
  if (items.length < (spec.minItems ?? 0)) {
    throw new FlagError(
      items.length === 0 ? `--${name} is empty` : `--${name} needs at least ${spec.minItems} items`,
      name,
    );
  }
  if (spec.choices === undefined) return items;
  for (const t of items) {
    if (!spec.choices.includes(t)) {
      throw new FlagError(
        `--${name}: unknown ${spec.itemName ?? "value"} "${t}" (known: ${spec.choices.join(", ")})`,
        name,
      );
    }
  }
  return spec.choices.filter((c) => items.includes(c));
}

// ---------------------------------------------------------------------------------------------
// Schemas

function schemaOf(spec: FlagSpec): z.ZodType {
  let s: z.ZodType;
  switch (spec.type) {
    case "string":
      s = spec.nonEmpty ? z.string().min(1) : z.string();
      break;
    case "int":
    case "number": {
      let n = spec.type === "int" ? z.number().int() : z.number();
      if (spec.min !== undefined) n = n.min(spec.min);
      if (spec.max !== undefined) n = n.max(spec.max);
      if (spec.type === "number" && spec.gt !== undefined) n = n.gt(spec.gt);
      if (spec.type === "number" && spec.lt !== undefined) n = n.lt(spec.lt);
      s = n;
      break;
    }
    case "boolean":
      s = z.boolean();
      break;
    case "enum":
      s = z.enum(spec.choices as [string, ...string[]]);
      break;
    case "list": {
      const item = spec.choices ? z.enum(spec.choices as [string, ...string[]]) : z.string();
      s = z.array(item).min(spec.minItems ?? 0);
      break;
    }
    case "custom":
      s = spec.schema;
      break;
  }
  return nullable(spec) ? s.nullable() : s;
}

/** Whether the flag's value may be `null` (absent); mirrors `ValueOf`. */
function nullable(spec: FlagSpec): boolean {
  if (spec.required || spec.type === "boolean" || spec.type === "list") return false;
  if (spec.type === "string" && spec.none !== undefined) return true;
  return spec.default === undefined || spec.default === null;
}

// ---------------------------------------------------------------------------------------------
// Usage text

const WIDTH = 100;
const COLUMN = 25;

function metavarOf(spec: FlagSpec): string {
  if (spec.metavar !== undefined) return spec.metavar;
  switch (spec.type) {
    case "string":
    case "custom":
      return "VALUE";
    case "int":
      return "N";
    case "number":
      return "X";
    case "boolean":
      return spec.explicit ? "true|false" : "";
    case "enum":
      return spec.choices.join("|");
    case "list":
      return "LIST";
  }
}

function defaultTextOf(spec: FlagSpec): string | null {
  if (spec.defaultText !== undefined) return spec.defaultText;
  const d = spec.default;
  if (d === undefined || d === null || typeof d === "function") return null;
  if (spec.type === "boolean") return spec.explicit ? String(d) : null;
  if (Array.isArray(d)) return d.length === 0 ? null : d.join(",");
  return String(d);
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/).filter((w) => w !== "")) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line === "" ? word : `${line} ${word}`;
  }
  if (line !== "") lines.push(line);
  return lines;
}

function usageLine(left: string, help: string): string {
  const body = wrap(help, WIDTH - COLUMN);
  const pad = " ".repeat(COLUMN);
  if (body.length === 0) return left;
  const first = left.length < COLUMN - 1 ? [left.padEnd(COLUMN) + body[0]] : [left, pad + body[0]];
  return [...first, ...body.slice(1).map((l) => pad + l)].join("\n");
}

function flagUsage(name: string, spec: FlagSpec): string {
  const negated = spec.type === "boolean" && !spec.explicit && spec.default === true;
  const meta = metavarOf(spec);
  const left = `  --${negated ? `no-${name}` : name}${meta === "" ? "" : ` ${meta}`}`;
  const notes: string[] = [];
  if (spec.type === "list" && spec.repeat) notes.push("repeatable");
  if (spec.required) notes.push("required");
  const d = negated ? null : defaultTextOf(spec);
  if (d !== null) notes.push(`default ${d}`);
  return usageLine(left, notes.length ? `${spec.help} (${notes.join("; ")})` : spec.help);
}

// ---------------------------------------------------------------------------------------------
// The table

/** A CLI's flags, from one table: parse, defaults, usage, schema, subsets. */
export class Flags<F extends FlagTable> {
  /** The parsed options' type: `typeof X.Options`. */
  declare readonly Options: OptionsOf<F>;
  readonly name: string;
  readonly flags: F;
  readonly #spec: CliSpec<F>;
  readonly #names: readonly string[];
  #schema?: z.ZodType<OptionsOf<F>>;

  constructor(spec: CliSpec<F>) {
    this.#spec = spec;
    this.name = spec.name;
    this.flags = spec.flags;
    this.#names = Object.keys(spec.flags);
    for (const n of this.#names) {
      if (n === "help" || !/^[a-z][a-z0-9]*(-[a-z0-9]+)*$/.test(n)) {
        throw new Error(`flag table ${spec.name}: bad flag name "${n}"`);
      }
      if (spec.flags[n].secret && !nullable(spec.flags[n])) {
        throw new Error(`flag table ${spec.name}: secret flag --${n} must be able to be absent`);
      }
    }
  }

  /** The flags' names, in table order. */
  get names(): readonly string[] {
    return this.#names;
  }

  /** The declaration of flag `name`. */
  spec(name: string): FlagSpec {
    const s = (this.flags as FlagTable)[name];
    if (s === undefined) throw new Error(`flag table ${this.name}: no flag --${name}`);
    return s;
  }

  /** Parses `args`; throws a `FlagError` naming the flag for anything wrong. */
  parse(args: readonly string[]): Parsed<OptionsOf<F>> {
    const options: Record<string, { type: "string" | "boolean"; multiple?: boolean }> = {
      help: { type: "boolean" },
    };
    for (const n of this.#names) {
      const s = this.flags[n];
      options[n] = s.type === "boolean" && !s.explicit
        ? { type: "boolean" }
        : { type: "string", ...(s.type === "list" && s.repeat ? { multiple: true } : {}) };
    }
    let parsed;
    try {
      parsed = parseArgs(
        {
          args: [...args],
          options,
          strict: true,
          allowPositionals: this.#spec.positionals !== undefined,
          allowNegative: true,
        } as Parameters<typeof parseArgs>[0] & { allowNegative: boolean },
      );
    } catch (e) {
      // One line: Node's hint on positionals that look like flags goes, line breaks too.
      const message = (e as Error).message
        .replace(/\. To specify a positional argument.*$/s, "")
        .replace(/\s*\n\s*/g, " ");
      throw new FlagError(`${message} (see --help)`);
    }
    const values = parsed.values as Record<string, string | string[] | boolean | undefined>;
    const positionals = parsed.positionals;
    if (values.help === true) {
      return { help: true, options: this.defaults(), positionals, given: new Set() };
    }
    const given = new Set<string>();
    const o: Record<string, unknown> = {};
    for (const n of this.#names) {
      const v = values[n];
      if (v === undefined) continue;
      given.add(n);
      o[camelName(n)] = typeof v === "boolean" ? v : parseValue(n, this.flags[n], v);
    }
    this.#fillDefaults(o, given);
    // Fields in table order, whichever flags were given.
    const ordered = Object.fromEntries(this.#names.map((n) => [camelName(n), o[camelName(n)]]));
    const options_ = ordered as OptionsOf<F>;
    this.#spec.check?.(options_, given);
    return { help: false, options: options_, positionals, given };
  }

  #fillDefaults(o: Record<string, unknown>, given: ReadonlySet<string> | null): void {
    const computed: string[] = [];
    for (const n of this.#names) {
      if (given?.has(n)) continue;
      const s = this.flags[n];
      if (s.required) {
        if (given === null) continue;
        throw new FlagError(`--${n} is required (see --help)`, n);
      }
      if (typeof s.default === "function") computed.push(n);
      else if (s.default === undefined || s.default === null) {
        o[camelName(n)] = s.type === "boolean" ? false : s.type === "list" ? [] : null;
      } else o[camelName(n)] = Array.isArray(s.default) ? [...s.default] : s.default;
    }
    for (const n of computed) {
      o[camelName(n)] = (this.flags[n].default as (o: Resolved) => unknown)(o);
    }
  }

  /**
   * The options with no flag given: computed defaults computed, required flags left out, no
   * cross-flag check.
   */
  defaults(): OptionsOf<F> {
    const o: Record<string, unknown> = {};
    this.#fillDefaults(o, null);
    return Object.fromEntries(
      this.#names.flatMap((n) => camelName(n) in o ? [[camelName(n), o[camelName(n)]]] : []),
    ) as OptionsOf<F>;
  }

  /** The usage text, grouped and aligned. */
  get usage(): string {
    const s = this.#spec;
    const out: string[] = [];
    if (s.about) out.push(s.about, "");
    out.push(`usage: ${s.usage}`, "");
    if (s.positionals) out.push(usageLine(`  ${s.positionals.metavar}`, s.positionals.help));
    const order = ["", ...(s.groups ?? [])];
    for (const n of this.#names) {
      const g = this.flags[n].group ?? "";
      if (!order.includes(g)) order.push(g);
    }
    for (const g of order) {
      const names = this.#names.filter((n) => (this.flags[n].group ?? "") === g);
      if (names.length === 0) continue;
      if (g !== "") out.push(g);
      for (const n of names) out.push(flagUsage(n, this.flags[n]));
    }
    out.push(usageLine("  --help", "this text"));
    return out.join("\n") + "\n";
  }

  /** A zod schema of the parsed options. */
  get schema(): z.ZodType<OptionsOf<F>> {
    this.#schema ??= this.#objectSchema(this.#names) as z.ZodType<OptionsOf<F>>;
    return this.#schema;
  }

  #objectSchema(names: readonly string[]): z.ZodType {
    return z.object(Object.fromEntries(names.map((n) => [camelName(n), schemaOf(this.flags[n])])));
  }

  /** The names of the flags marked `m`, in table order. */
  marked(m: Mark): string[] {
    return this.#names.filter((n) => this.flags[n][m] === true);
  }

  /** The zod schema of the options of the flags marked `m`. */
  markedSchema<M extends Mark>(m: M): z.ZodType<MarkedOptions<F, M>> {
    return this.#objectSchema(this.marked(m)) as z.ZodType<MarkedOptions<F, M>>;
  }

  /** The options of the flags marked `m`, picked from `o`. */
  pick<M extends Mark>(o: OptionsOf<F>, m: M): MarkedOptions<F, M> {
    const r = o as Record<string, unknown>;
    return Object.fromEntries(
      this.marked(m).map((n) => [camelName(n), r[camelName(n)]]),
    ) as MarkedOptions<F, M>;
  }

  /**
   * The options under their flags' names with `-` → `_`, in table order; a secret flag's value is
   * `"(hidden)"` when it was given.
   */
  config(o: OptionsOf<F>): Record<string, unknown> {
    const r = o as Record<string, unknown>;
    return Object.fromEntries(this.#names.map((n) => {
      const v = r[camelName(n)];
      return [snakeName(n), this.flags[n].secret && v !== null ? "(hidden)" : v];
    }));
  }

  /** The options with every secret flag's value dropped (null): what may leave this process. */
  redact(o: OptionsOf<F>): OptionsOf<F> {
    const r: Record<string, unknown> = { ...o };
    for (const n of this.marked("secret")) r[camelName(n)] = null;
    return r as OptionsOf<F>;
  }

  /**
   * For a program's entry point: the parsed options, or it ends: `--help` prints the usage
   * (exit 0); a `FlagError` prints one line, `<name>: <message>`, and exits 2.
   */
  main(
    args: readonly string[] = Deno.args,
  ): { options: OptionsOf<F>; positionals: string[]; given: Set<string> } {
    let parsed;
    try {
      parsed = this.parse(args);
    } catch (e) {
      if (e instanceof FlagError) exitWithFlagError(this.name, e);
      throw e;
    }
    if (parsed.help) {
      console.log(this.usage);
      Deno.exit(0);
    }
    return { options: parsed.options, positionals: parsed.positionals, given: parsed.given };
  }
}

/** Prints `<program>: <message>` and exits 2, the exit code of a usage error. */
export function exitWithFlagError(program: string, e: FlagError): never {
  console.error(`${program}: ${e.message}`);
  Deno.exit(2);
}

/** Declares a CLI's flags; see the module's documentation. */
export function defineFlags<const F extends FlagTable>(spec: CliSpec<F>): Flags<F> {
  return new Flags(spec);
}

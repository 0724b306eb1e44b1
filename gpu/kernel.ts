/**
 * Kernel declarations. A kernel states its interface once: named uniform parameters with their
 * scalar types and named storage bindings with their access and element type. `kernelSource`
 * generates the WGSL header from that declaration (the `Params` struct, its uniform binding and
 * one `var<storage>` line per binding), so a kernel's `body` holds only its helpers and entry
 * point, and `Recorder.dispatch` binds tensors and parameters by name.
 *
 * ```ts
 * const SCALE = defineKernel({
 *   name: "scale",
 *   params: { n: "u32", alpha: "f32" },
 *   bindings: { y: "read_write f32", x: "read f32" },
 *   body: `@compute @workgroup_size(64) fn main(...) { ... y[i] = p.alpha * x[i]; }`,
 * });
 * rec.dispatch(SCALE, { bindings: { y, x }, params: { n: x.size, alpha: 2 }, grid: [groups] });
 * ```
 *
 * The header is a pure function of the declaration (names and types in declaration order), so
 * the pipeline cache, keyed by source, compiles each distinct kernel once.
 *
 * Element access: for a `f32`, `vec4<f32>`, `bf16` or `f16` binding `X` that the body uses
 * through them (or any bf16/f16 binding), the header also defines `X_at(i) -> f32` (element i)
 * and, except for plain f32, `X_at4(i) -> vec4<f32>` (elements i..i+3; i a multiple of 4 for
 * vec4<f32>, even for 16-bit); a kernel that indexes its arrays directly gets no extra code. A
 * body written with these
 * accessors runs unchanged on f32 and on packed 16-bit tensors (bf16/f16 are stored two per u32
 * word, gpu/half.ts, so no shader-f16 extension is needed): the element type is a parameter of
 * the generated header, not of the body. A `read_write` 16-bit binding also gets
 * `X_store2(word, lo, hi)`, which writes two elements rounded to nearest even (the same bits as
 * the host's rounding); an invocation must own whole words, as two invocations writing the two
 * halves of one word would race.
 *
 * A kernel with loops also declares `loopBound(params)`: the most loop passes one invocation
 * can run for those parameters. The recorder refuses a dispatch whose bound exceeds
 * `MAX_INVOCATION_LOOP` (see there).
 * @module
 */
import { GpuShapeError } from "./errors.ts";
import type { DType, GpuTensor } from "./tensor.ts";

/**
 * The most loop passes one invocation of any kernel may run. lavapipe (llvmpipe) stops every
 * loop of an invocation, silently, once that invocation has run 65,535 loop passes in total,
 * across all its loops and nesting levels; it counts a loop of n iterations as n + 1 passes
 * (the pass that finds the condition false too). A kernel therefore declares, through
 * `loopBound`, an upper bound of Σ (iterations + 1) over the loops one invocation runs, and
 * `Recorder.dispatch` refuses (`KernelLoopBoundError`) a dispatch whose bound is larger. The
 * bound applies on every device, so that a shape behaves the same everywhere.
 */
export const MAX_INVOCATION_LOOP = 65535;

/** Scalar type of a uniform parameter. Every one is 4 bytes, so parameter k sits at byte 4k. */
export type ParamType = "u32" | "i32" | "f32";

/** How a kernel uses a storage binding (WGSL's access mode). */
export type Access = "read" | "read_write";

/**
 * Element type of a storage binding: `array<f32>`, `array<i32>`, `array<vec4<f32>>`, or 16-bit
 * floats packed two per `array<u32>` word (bf16, f16; see the module doc).
 */
export type ElementType = "f32" | "i32" | "vec4<f32>" | "bf16" | "f16";

/**
 * A storage binding: `"<access> <element type>"`, e.g. `"read f32"`, `"read_write i32"`. A
 * trailing `?` makes the binding optional: a dispatch may leave it out (or pass null), and the
 * first required binding with the same access is bound in its place, so the kernel must not
 * touch it then (a parameter flag tells it).
 */
export type BindingType = `${Access} ${ElementType}` | `${Access} ${ElementType}?`;

/** Uniform parameters by name, in `Params` struct order. */
export type ParamDecls = { readonly [name: string]: ParamType };

/** Storage bindings by name, in binding order (1, 2, …; binding 0 is the uniform `p`). */
export type BindingDecls = { readonly [name: string]: BindingType };

/** Everything a kernel declares. */
export interface KernelDecl<P extends ParamDecls, B extends BindingDecls> {
  /** Short name, used in timings and errors. */
  readonly name: string;
  /** Uniform parameters, read in WGSL as `p.<name>`. */
  readonly params: P;
  /** Storage bindings, read in WGSL by their names. */
  readonly bindings: B;
  /** WGSL after the generated header: helper functions, constants and the entry point. */
  readonly body: string;
  /** Entry point; default "main". */
  readonly entry?: string;
  /**
   * WGSL extensions the body uses (e.g. `f16`), written as `enable` directives before the
   * header; the device must have the matching feature (`shader-f16`).
   */
  readonly enables?: readonly string[];
  /**
   * The most loop passes one invocation runs for these parameters: Σ over the loops it runs of
   * (iterations + 1), an outer loop's passes included (see `MAX_INVOCATION_LOOP`). Required
   * when the body has a loop (`for`, `while`, `loop`); a body without loops runs 0.
   */
  loopBound?(params: ParamArgs<P>): number;
}

/**
 * What the pipeline cache looks a kernel up by: the declaring object (`family`) and which of its
 * variants (`key`). `declare` builds the declaration and is called only on a cache miss.
 */
export interface KernelRef<P extends ParamDecls, B extends BindingDecls> {
  readonly family: object;
  readonly key: string;
  declare(): KernelDecl<P, B>;
}

/** A kernel with a fixed declaration. */
export class Kernel<P extends ParamDecls, B extends BindingDecls> implements KernelRef<P, B> {
  readonly key = "";
  constructor(readonly decl: KernelDecl<P, B>) {
    kernelInterface(decl); // a bad declaration fails when its module loads
  }
  get family(): object {
    return this;
  }
  get name(): string {
    return this.decl.name;
  }
  declare(): KernelDecl<P, B> {
    return this.decl;
  }
}

/**
 * A kernel generated per configuration (tile sizes, head size, load modes): `variant(config)`
 * names one variant, and the pipeline cache calls `make(config)` the first time it sees it.
 * Every variant has the same parameter and binding names (their element types may differ).
 */
export class KernelVariants<C, P extends ParamDecls, B extends BindingDecls> {
  constructor(
    readonly make: (config: C) => KernelDecl<P, B>,
    readonly keyOf: (config: C) => string = (c) => JSON.stringify(c),
  ) {}

  variant(config: C): KernelRef<P, B> {
    return { family: this, key: this.keyOf(config), declare: () => this.make(config) };
  }
}

/** Declares a kernel (see the module doc). */
export function defineKernel<const P extends ParamDecls, const B extends BindingDecls>(
  decl: KernelDecl<P, B>,
): Kernel<P, B> {
  return new Kernel(decl);
}

/** Declares a family of generated kernels, one per configuration (see `KernelVariants`). */
export function defineKernelVariants<C, const P extends ParamDecls, const B extends BindingDecls>(
  make: (config: C) => KernelDecl<P, B>,
  keyOf?: (config: C) => string,
): KernelVariants<C, P, B> {
  return new KernelVariants(make, keyOf);
}

// ---- dispatch arguments ----------------------------------------------------------------------

type OptionalNames<B> = { [K in keyof B]: B[K] extends `${string}?` ? K : never }[keyof B];

/** Tensors by binding name: required bindings must be given, optional ones may be null. */
export type BindingArgs<B extends BindingDecls> =
  & { readonly [K in Exclude<keyof B, OptionalNames<B>>]: GpuTensor }
  & { readonly [K in OptionalNames<B>]?: GpuTensor | null };

/** Values by parameter name, every one required. */
export type ParamArgs<P extends ParamDecls> = { readonly [K in keyof P]: number };

/** Workgroup counts [x, y?, z?]. */
export type Grid = readonly [number, number?, number?];

/** The arguments of one dispatch. */
export interface DispatchArgs<P extends ParamDecls, B extends BindingDecls> {
  readonly bindings: BindingArgs<B>;
  readonly params: ParamArgs<P>;
  readonly grid: Grid;
}

// ---- the checked interface and the generated source -----------------------------------------

export interface ParamInfo {
  readonly name: string;
  readonly type: ParamType;
}

export interface BindingInfo {
  readonly name: string;
  /** WGSL binding number (index + 1). */
  readonly binding: number;
  readonly access: Access;
  readonly element: ElementType;
  /** The tensor dtype the element type needs. */
  readonly dtype: DType;
  readonly optional: boolean;
  /** Index of the required binding whose tensor stands in when this optional one is absent. */
  readonly standIn: number;
}

/** A checked declaration with its generated WGSL. */
export interface KernelInterface {
  readonly name: string;
  readonly entry: string;
  readonly params: readonly ParamInfo[];
  readonly bindings: readonly BindingInfo[];
  readonly paramIndex: ReadonlyMap<string, number>;
  readonly bindingIndex: ReadonlyMap<string, number>;
  /** Size of the Params struct rounded up to 16 bytes (the uniform binding's size). */
  readonly paramBytes: number;
  /** The complete WGSL: generated header, then the body. */
  readonly code: string;
  /** The declared loop bound (see `KernelDecl.loopBound`); null for a body without loops. */
  readonly loopBound: ((params: Readonly<Record<string, number>>) => number) | null;
}

const IDENT = /^[A-Za-z][A-Za-z0-9_]*$/;
const PARAM_TYPES: readonly string[] = ["u32", "i32", "f32"];
const ELEMENTS: Readonly<Record<ElementType, DType>> = {
  "f32": "f32",
  "i32": "i32",
  "vec4<f32>": "f32",
  "bf16": "bf16",
  "f16": "f16",
};
/** Names the generated header uses itself. */
const RESERVED = new Set(["p", "Params"]);

function declError(name: string, message: string): GpuShapeError {
  return new GpuShapeError(`kernel ${name}: ${message}`);
}

/** True when WGSL source (comments aside) has a loop statement. */
export function hasLoop(wgsl: string): boolean {
  const code = wgsl.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/\/\/.*$/gm, "");
  return /\b(for|while|loop)\b/.test(code);
}

function parseBinding(kernel: string, name: string, type: string) {
  const m = /^(read|read_write) (f32|i32|vec4<f32>|bf16|f16)(\?)?$/.exec(type);
  if (!m) {
    throw declError(
      kernel,
      `binding ${name}: '${type}' is not '<read|read_write> <f32|i32|vec4<f32>|bf16|f16>[?]'`,
    );
  }
  return { access: m[1] as Access, element: m[2] as ElementType, optional: m[3] === "?" };
}

/**
 * Checks a declaration and generates its WGSL.
 * @throws GpuShapeError on a name that is not a WGSL identifier or is reserved (`p`, `Params`),
 *   an unknown type, an optional binding without a required binding of the same access, or a
 *   body with a loop and no `loopBound`.
 */
export function kernelInterface<P extends ParamDecls, B extends BindingDecls>(
  decl: KernelDecl<P, B>,
): KernelInterface {
  const kernel = decl.name;
  const params: ParamInfo[] = [];
  for (const [name, type] of Object.entries(decl.params)) {
    if (!IDENT.test(name)) throw declError(kernel, `parameter name '${name}' is not an identifier`);
    if (!PARAM_TYPES.includes(type)) {
      throw declError(kernel, `parameter ${name}: type '${type}' is not u32, i32 or f32`);
    }
    params.push({ name, type });
  }
  const parsed = Object.entries(decl.bindings).map(([name, type]) => {
    if (!IDENT.test(name) || RESERVED.has(name)) {
      throw declError(kernel, `binding name '${name}' is not an identifier or is reserved`);
    }
    return { name, ...parseBinding(kernel, name, type) };
  });
  const bindings: BindingInfo[] = parsed.map((b, i) => {
    let standIn = i;
    if (b.optional) {
      standIn = parsed.findIndex((o) => !o.optional && o.access === b.access);
      if (standIn < 0) {
        throw declError(kernel, `optional binding ${b.name} needs a required ${b.access} binding`);
      }
    }
    return { ...b, binding: i + 1, dtype: ELEMENTS[b.element], standIn };
  });
  if (decl.loopBound === undefined && hasLoop(decl.body)) {
    throw declError(kernel, "the body has a loop; declare its loopBound");
  }
  return {
    name: kernel,
    entry: decl.entry ?? "main",
    params,
    bindings,
    paramIndex: new Map(params.map((q, i) => [q.name, i])),
    bindingIndex: new Map(bindings.map((b, i) => [b.name, i])),
    paramBytes: Math.max(16, Math.ceil((params.length * 4) / 16) * 16),
    code: (decl.enables ?? []).map((e) => `enable ${e};\n`).join("") +
      kernelHeader(params, bindings, decl.body) + decl.body,
    loopBound: (decl.loopBound as KernelInterface["loopBound"] | undefined) ?? null,
  };
}

/**
 * The WGSL header of a kernel: `struct Params` (one field per parameter, in order; a `pad`
 * field when there are none, as WGSL has no empty structs), `var<uniform> p: Params` at binding
 * 0, then each storage binding at 1, 2, …, then the element accessors (see the module doc) of
 * the bindings `body` uses through them and of every bf16/f16 binding.
 */
export function kernelHeader(
  params: readonly ParamInfo[],
  bindings: readonly Pick<BindingInfo, "name" | "access" | "element">[],
  body?: string,
): string {
  const fields = params.length > 0 ? params.map((q) => `  ${q.name}: ${q.type},`) : ["  pad: u32,"];
  const lines = [
    "struct Params {",
    ...fields,
    "}",
    "@group(0) @binding(0) var<uniform> p: Params;",
    ...bindings.map((b, i) =>
      `@group(0) @binding(${i + 1}) var<storage, ${b.access}> ${b.name}: ` +
      `array<${isPacked(b.element) ? "u32" : b.element}>;`
    ),
  ];
  if (bindings.some((b) => isPacked(b.element) && b.access === "read_write")) {
    lines.push(ROUND_HALF_WGSL);
  }
  for (const b of bindings) {
    const used = body !== undefined && new RegExp(`\\b${b.name}_at4?\\(`).test(body);
    if (isPacked(b.element) || used) lines.push(...accessors(b.name, b.element, b.access));
  }
  return lines.join("\n") + "\n";
}

function isPacked(e: ElementType): e is "bf16" | "f16" {
  return e === "bf16" || e === "f16";
}

/** The element accessors of one binding (see the module doc). */
function accessors(name: string, element: ElementType, access: Access): string[] {
  const x = name;
  switch (element) {
    case "f32":
      return [`fn ${x}_at(i: u32) -> f32 { return ${x}[i]; }`];
    case "vec4<f32>":
      return [
        `fn ${x}_at(i: u32) -> f32 { return ${x}[i >> 2u][i & 3u]; }`,
        `fn ${x}_at4(i: u32) -> vec4<f32> { return ${x}[i >> 2u]; }`,
      ];
    case "bf16": {
      // A bf16 is the top half of an f32: moving its bits up gives the exact f32.
      const out = [
        `fn ${x}_at(i: u32) -> f32 {`,
        `  let w = ${x}[i >> 1u];`,
        `  return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u));`,
        `}`,
        `fn ${x}_at4(i: u32) -> vec4<f32> {`,
        `  let a = ${x}[i >> 1u];`,
        `  let b = ${x}[(i >> 1u) + 1u];`,
        `  return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));`,
        `}`,
      ];
      if (access === "read_write") {
        out.push(
          `fn ${x}_store2(w: u32, lo: f32, hi: f32) { ${x}[w] = bf16Bits(lo) | (bf16Bits(hi) << 16u); }`,
        );
      }
      return out;
    }
    case "f16": {
      // unpack2x16float is WGSL core (no shader-f16 extension); an f16 converts to f32 exactly.
      const out = [
        `fn ${x}_at(i: u32) -> f32 { return unpack2x16float(${x}[i >> 1u])[i & 1u]; }`,
        `fn ${x}_at4(i: u32) -> vec4<f32> {`,
        `  return vec4<f32>(unpack2x16float(${x}[i >> 1u]), unpack2x16float(${x}[(i >> 1u) + 1u]));`,
        `}`,
      ];
      if (access === "read_write") {
        out.push(
          `fn ${x}_store2(w: u32, lo: f32, hi: f32) { ${x}[w] = f16Bits(lo) | (f16Bits(hi) << 16u); }`,
        );
      }
      return out;
    }
    default:
      return [];
  }
}

/**
 * f32 → bf16 / f16 bits, rounded to nearest even, in integer arithmetic so that every device
 * gives the host's bits (gpu/half.ts), as WGSL leaves the rounding of f32→f16 conversions (and
 * pack2x16float's out-of-range results) to the implementation.
 */
const ROUND_HALF_WGSL = /* wgsl */ `fn bf16Bits(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  if ((b & 0x7f800000u) == 0x7f800000u && (b & 0x7fffffu) != 0u) { return 0x7fc0u; }
  return ((b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u) & 0xffffu;
}
fn shiftRoundEven(m: u32, s: u32) -> u32 {
  let q = m >> s;
  let rem = m - (q << s);
  let half = 1u << (s - 1u);
  return select(q, q + 1u, rem > half || (rem == half && (q & 1u) == 1u));
}
fn f16Bits(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  let sign = (b >> 16u) & 0x8000u;
  let ex = (b >> 23u) & 0xffu;
  let mant = b & 0x7fffffu;
  if (ex == 0xffu) { return sign | select(0x7c00u, 0x7e00u, mant != 0u); }
  let e = i32(ex) - 112;
  if (e >= 31) { return sign | 0x7c00u; }
  if (e >= 1) { return sign | ((u32(e) << 10u) + shiftRoundEven(mant, 13u)); }
  if (ex == 0u || 126u - ex > 25u) { return sign; }
  return sign | shiftRoundEven(mant | 0x800000u, 126u - ex);
}`;

/** The complete WGSL source of a declaration (header and body). */
export function kernelSource<P extends ParamDecls, B extends BindingDecls>(
  decl: KernelDecl<P, B>,
): string {
  return kernelInterface(decl).code;
}

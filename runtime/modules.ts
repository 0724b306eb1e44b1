/**
 * Loading actor types by module URL, only from a node's allow-list.
 *
 * A spawn request names a module URL and a type; the node imports the module only when the URL
 * starts with one of its allowed prefixes. The allow-list is the node's own local configuration
 * (the project's folder plus what its operator passes), never something read from the wire, so a
 * client cannot make a node run code of its choice.
 *
 * A spawn may instead name a module bundle by its digest (see bundles.ts): the node then needs that
 * digest in its own allow-list of bundles, fetches the bundle, checks it, and imports the bundle's
 * entry from its private cache folder.
 * @module
 */
import { type AnyActorDef, isActorDef } from "./actor.ts";
import { BundleCache, checkDigest } from "./bundles.ts";
import { BundleNotAllowedError, ModuleNotAllowedError, UnknownActorTypeError } from "./errors.ts";

/** The folder of this project (the default allow-list entry). */
export const PROJECT_ROOT = new URL("../", import.meta.url).href;

/**
 * Normalises an allow-list entry: a URL, or a local path (made absolute). A folder prefix gets a
 * trailing slash so `file:///a/b` does not also allow `file:///a/bc/`.
 */
export function normalizePrefix(prefix: string): string {
  let url: URL;
  try {
    url = new URL(prefix);
  } catch {
    const abs = prefix.startsWith("/") ? prefix : `${Deno.cwd()}/${prefix}`;
    url = new URL(`file://${abs}`);
  }
  let href = url.href;
  if (url.protocol === "file:" && !href.endsWith("/")) {
    try {
      if (Deno.statSync(url).isDirectory) href += "/";
    } catch { /* not there (yet): keep as given */ }
  }
  return href;
}

/** How a loader gets module bundles. */
export interface BundleSource {
  /** Digests this node may import bundles of (its own configuration). */
  allow: readonly string[];
  /** The node's name, for error messages. */
  node: string;
  /** Reads the bytes stored for a digest (they are checked against it after). */
  fetch(digest: string): Promise<Uint8Array>;
  /** A folder to keep unpacked bundles in; default a private temp folder. */
  cacheDir?: string;
}

/** Resolves actor types for one node. */
export class ModuleLoader {
  readonly allowed: readonly string[];
  /** Bundle digests allowed here. */
  readonly allowedBundles: readonly string[];
  readonly #local = new Map<string, AnyActorDef>();
  readonly #bundled = new Map<string, AnyActorDef>();
  readonly #source?: BundleSource;
  readonly #cache: BundleCache;

  constructor(allow: readonly string[], bundles?: BundleSource) {
    this.allowed = [...new Set(allow.map(normalizePrefix))];
    this.allowedBundles = [...new Set((bundles?.allow ?? []).map((d) => checkDigest(d)))];
    this.#source = bundles;
    this.#cache = new BundleCache(bundles?.cacheDir);
  }

  /** The cache of unpacked bundles. */
  get bundles(): BundleCache {
    return this.#cache;
  }

  /** Makes a definition held by this process resolvable without importing it. */
  register(def: AnyActorDef) {
    this.#local.set(key(def.name, def.module), def);
  }

  /** Whether a module URL is allowed here. */
  allows(module: string): boolean {
    let href: string;
    try {
      href = new URL(module).href;
    } catch {
      return false;
    }
    return this.allowed.some((p) => href.startsWith(p));
  }

  /**
   * Finds the definition of `type` exported by `module` (after checking the allow-list), or, with
   * `bundle`, exported by the entry of that module bundle (after checking the bundle allow-list).
   * A definition this process registered itself wins: it already runs that code.
   */
  async load(type: string, module: string | undefined, bundle?: string): Promise<AnyActorDef> {
    const local = this.#local.get(key(type, module));
    if (local) return local;
    if (bundle !== undefined) return await this.#loadBundle(type, bundle);
    if (module === undefined) {
      throw new UnknownActorTypeError(
        type,
        undefined,
        'it has no module URL, so only the process that defines it can host it (spawn with node: "local")',
      );
    }
    if (!this.allows(module)) throw new ModuleNotAllowedError(module, this.allowed);
    let mod: Record<string, unknown>;
    try {
      mod = await import(new URL(module).href);
    } catch (e) {
      throw new UnknownActorTypeError(type, module, `import failed: ${(e as Error).message}`);
    }
    for (const v of Object.values(mod)) {
      if (isActorDef(v) && v.name === type) {
        this.#local.set(key(type, module), v);
        return v;
      }
    }
    throw new UnknownActorTypeError(type, module, "the module exports no actor of that name");
  }

  async #loadBundle(type: string, digest: string): Promise<AnyActorDef> {
    const node = this.#source?.node ?? "?";
    if (!this.allowedBundles.includes(digest)) throw new BundleNotAllowedError(digest, node);
    const k = `${digest}#${type}`;
    const known = this.#bundled.get(k);
    if (known) return known;
    const source = this.#source!;
    const entry = await this.#cache.entry(digest, () => source.fetch(digest));
    let mod: Record<string, unknown>;
    try {
      mod = await import(entry.href);
    } catch (e) {
      throw new UnknownActorTypeError(type, digest, `import failed: ${(e as Error).message}`);
    }
    for (const v of Object.values(mod)) {
      if (isActorDef(v) && v.name === type) {
        this.#bundled.set(k, v);
        return v;
      }
    }
    throw new UnknownActorTypeError(
      type,
      digest,
      "the bundle's entry exports no actor of that name",
    );
  }
}

function key(type: string, module: string | undefined): string {
  return `${module ?? "local:"}#${type}`;
}

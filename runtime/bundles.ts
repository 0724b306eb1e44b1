/**
 * Module bundles: shipping an actor module that exists only on the host of the program that
 * spawns it (Ray's `working_dir`, for one module and what it imports).
 *
 * A bundle is the entry module plus every local file it reaches through relative imports, as one
 * canonical JSON document keyed by relative path. Bare and `npm:` imports (zod, this runtime by
 * its package name) are not bundled: the node resolves them with its own import map, so the actor
 * shares the node's copy of the runtime and of zod. A bundle is named by the SHA-256 of its bytes
 * (`sha256:<hex>`) and travels through the system's object store.
 *
 * A node imports a bundle only when its digest is in the node's own allow-list, only after
 * checking that the bytes it fetched hash to that digest, and only from its private cache folder.
 *
 * Why not `deno bundle`: it inlines npm packages and the runtime itself into the output (a
 * four-line module importing zod came out at 746 KB), so the actor would run on a second copy of
 * the runtime and of zod next to the node's, and its first run fetches esbuild from npm.
 * @module
 */
import { z } from "zod";
import type { AnyActorDef } from "./actor.ts";
import { BundleDigestError, BundleError, InvalidArgumentError } from "./errors.ts";

/** The format tag in every bundle; a node refuses any other. */
export const BUNDLE_FORMAT = "actors-bundle/1";

/** How a bundle digest is written: `sha256:` and 64 lower-case hex digits. */
export const DIGEST_PATTERN = /^sha256:[0-9a-f]{64}$/;

/** Largest bundle a node accepts (bounds what a sender can make a node write). */
export const MAX_BUNDLE_BYTES = 64 * 1024 * 1024;

const MAX_FILES = 4096;
const SEGMENT = /^[A-Za-z0-9_@+=,~ .-]{1,255}$/;
const MODULE_EXT = /\.(ts|mts|js|mjs|tsx|jsx)$/;

/** A bundle built on the shipping side. */
export interface ModuleBundle {
  /** `sha256:<hex>` of {@link bytes}. */
  digest: string;
  /** URL of the entry module, as the program that built it sees it. */
  entry: string;
  /** The files inside, by path relative to the bundle's root. */
  files: string[];
  /** The canonical bytes (what is stored and hashed). */
  bytes: Uint8Array;
}

/** A bundle stored in a system's object store, as `System.shipModule` returns it. */
export interface ShippedModule {
  /** `sha256:<hex>`: what nodes must allow (`--allow-bundle`) and what spawns name. */
  digest: string;
  /** URL of the entry module on the shipping host. */
  entry: string;
  /** The files inside, by relative path. */
  files: string[];
  /** Size of the bundle in bytes. */
  size: number;
  /**
   * `def`, spawned from this bundle: nodes import its type from the bundle instead of from its
   * module URL. `def` must be defined in the entry module (`module: import.meta.url` there).
   */
  actor<D extends AnyActorDef>(def: D): D;
}

/** `def` with nodes told to load it from bundle `b` (see {@link ShippedModule.actor}). */
export function bundledActor<D extends AnyActorDef>(
  def: D,
  b: { digest: string; entry: string },
): D {
  if (def.module !== b.entry) {
    throw new InvalidArgumentError(
      `${def.name} is defined in ${
        def.module ?? "no module"
      }, not in the bundle's entry ${b.entry}: ` +
        "define it there (module: import.meta.url) so that nodes find it by name",
    );
  }
  return Object.freeze({ ...def, bundle: checkDigest(b.digest) });
}

/** Checks a digest's form; returns it. */
export function checkDigest(digest: string, what = "bundle digest"): string {
  if (typeof digest !== "string" || !DIGEST_PATTERN.test(digest)) {
    throw new InvalidArgumentError(
      `${what} ${JSON.stringify(digest)} is invalid: use sha256: and 64 lower-case hex digits`,
    );
  }
  return digest;
}

/** The object store name a bundle is kept under. */
export function bundleObjectName(digest: string): string {
  return `bundles/${checkDigest(digest)}`;
}

/** `sha256:<hex>` of some bytes. */
export async function digestOf(bytes: Uint8Array): Promise<string> {
  const h = new Uint8Array(
    await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>),
  );
  return `sha256:${Array.from(h, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

const bundleSchema = z.object({
  format: z.literal(BUNDLE_FORMAT),
  entry: z.string(),
  files: z.record(z.string(), z.string()),
}).strict();

type BundleDoc = z.infer<typeof bundleSchema>;

/** Whether a relative path stays inside the folder it is unpacked into. */
function checkPath(path: string): string {
  const segs = path.split("/");
  if (
    path.length > 1024 || segs.some((s) => !SEGMENT.test(s) || s === "." || s === "..")
  ) {
    throw new BundleError(`bundle path ${JSON.stringify(path)} is not a plain relative path`);
  }
  return path;
}

/** The canonical bytes of a bundle: paths sorted, so the same files give the same digest. */
function encode(entry: string, files: Map<string, string>): Uint8Array {
  const sorted: Record<string, string> = {};
  for (const p of [...files.keys()].sort()) sorted[p] = files.get(p)!;
  return new TextEncoder().encode(JSON.stringify({ format: BUNDLE_FORMAT, entry, files: sorted }));
}

/** Parses and checks a bundle's bytes (after its digest was checked). */
export function decodeBundle(bytes: Uint8Array): BundleDoc {
  if (bytes.byteLength > MAX_BUNDLE_BYTES) {
    throw new BundleError(`bundle is ${bytes.byteLength} bytes; at most ${MAX_BUNDLE_BYTES}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new BundleError(`bundle is not UTF-8 JSON: ${(e as Error).message}`);
  }
  const doc = bundleSchema.safeParse(raw);
  if (!doc.success) {
    throw new BundleError(
      `bundle does not match the ${BUNDLE_FORMAT} format: ${doc.error.message}`,
    );
  }
  const paths = Object.keys(doc.data.files);
  if (paths.length === 0 || paths.length > MAX_FILES) {
    throw new BundleError(`bundle holds ${paths.length} files; 1 to ${MAX_FILES} allowed`);
  }
  paths.forEach(checkPath);
  if (!Object.hasOwn(doc.data.files, doc.data.entry) || !MODULE_EXT.test(doc.data.entry)) {
    throw new BundleError(`bundle entry ${JSON.stringify(doc.data.entry)} is not a module in it`);
  }
  return doc.data;
}

interface InfoDependency {
  specifier: string;
  code?: { specifier?: string; error?: string };
}
interface InfoModule {
  specifier: string;
  local?: string;
  error?: string;
  dependencies?: InfoDependency[];
}

/** The module graph of `entry`, as `deno info --json` reports it (resolution as Deno does it). */
async function moduleGraph(
  entry: URL,
  config: string | undefined,
): Promise<Map<string, InfoModule>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", ...(config ? [`--config=${config}`] : []), entry.href],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  if (!out.success) {
    throw new BundleError(
      `cannot read the module graph of ${entry.href}: ${
        new TextDecoder().decode(out.stderr).trim()
      }`,
    );
  }
  const info = JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: InfoModule[] };
  return new Map(info.modules.map((m) => [m.specifier, m]));
}

/**
 * Builds the bundle of a local module: the module and the files it reaches through relative
 * imports (`./`, `../`), keyed by path relative to their common folder. Other imports stay as
 * written. `config` is the Deno configuration to resolve with (the one node processes use).
 */
export async function bundleModule(
  entry: URL | string,
  options: { config?: string } = {},
): Promise<ModuleBundle> {
  const url = new URL(entry);
  if (url.protocol !== "file:") {
    throw new InvalidArgumentError(`only a local module can be bundled, not ${url.href}`);
  }
  if (!MODULE_EXT.test(url.pathname)) {
    throw new InvalidArgumentError(`${url.href} is not a JavaScript or TypeScript module`);
  }
  const graph = await moduleGraph(url, options.config);
  const found = new Map<string, string>(); // file URL -> local path
  const todo = [url.href];
  while (todo.length) {
    const spec = todo.pop()!;
    if (found.has(spec)) continue;
    const m = graph.get(spec);
    if (!m || m.error || !m.local) {
      throw new BundleError(`cannot bundle ${spec}: ${m?.error ?? "not in the module graph"}`);
    }
    found.set(spec, m.local);
    for (const d of m.dependencies ?? []) {
      // Only relative imports are the application's own files; the rest is the node's business.
      if (!d.specifier.startsWith("./") && !d.specifier.startsWith("../")) continue;
      const to = d.code?.specifier;
      if (!to || d.code?.error) {
        throw new BundleError(`${spec} imports ${d.specifier}: ${d.code?.error ?? "unresolved"}`);
      }
      if (!to.startsWith("file:")) {
        throw new BundleError(`${spec} imports ${d.specifier}, which is not a local file (${to})`);
      }
      todo.push(to);
    }
  }
  // The common folder of every file: paths inside the bundle are relative to it.
  const dirs = [...found.keys()].map((u) => new URL("./", u).pathname.split("/").slice(0, -1));
  let common = dirs[0];
  for (const d of dirs) {
    let i = 0;
    while (i < common.length && i < d.length && common[i] === d[i]) i++;
    common = common.slice(0, i);
  }
  const root = common.join("/") + "/";
  const files = new Map<string, string>();
  for (const [spec, local] of found) {
    const rel = decodeURIComponent(new URL(spec).pathname.slice(root.length));
    files.set(checkPath(rel), await Deno.readTextFile(local));
  }
  const entryPath = decodeURIComponent(url.pathname.slice(root.length));
  const bytes = encode(entryPath, files);
  if (bytes.byteLength > MAX_BUNDLE_BYTES) {
    throw new BundleError(
      `the bundle of ${url.href} is ${bytes.byteLength} bytes; at most ${MAX_BUNDLE_BYTES}`,
    );
  }
  return { digest: await digestOf(bytes), entry: url.href, files: [...files.keys()].sort(), bytes };
}

/**
 * A node's private folder of unpacked bundles, one sub-folder per digest:
 * `<root>/<hex>/bundle.json` (the bytes as fetched) and `<root>/<hex>/src/...` (the files).
 */
export class BundleCache {
  #root?: Promise<string>;
  readonly #owned: boolean;
  readonly #given?: string;
  /** Digests whose folder this process unpacked or checked, with their entry module's URL. */
  readonly #ready = new Map<string, Promise<URL>>();

  /** `root`: a folder to keep bundles in (kept); default a fresh private temp folder (removed by close). */
  constructor(root?: string) {
    this.#given = root;
    this.#owned = root === undefined;
  }

  /** The folder, created (mode 700) on first use. */
  root(): Promise<string> {
    this.#root ??= (async () => {
      if (this.#given === undefined) {
        return await Deno.makeTempDir({ prefix: "actors-bundles-" });
      }
      await Deno.mkdir(this.#given, { recursive: true, mode: 0o700 });
      return this.#given;
    })();
    return this.#root;
  }

  /**
   * The URL of the entry module of bundle `digest`, unpacked here: from the cache when this
   * process already has it, else fetched with `fetch`, checked against the digest and unpacked.
   */
  entry(digest: string, fetch: () => Promise<Uint8Array>): Promise<URL> {
    checkDigest(digest);
    let p = this.#ready.get(digest);
    if (!p) {
      p = this.#open(digest, fetch);
      this.#ready.set(digest, p);
      p.catch(() => this.#ready.delete(digest));
    }
    return p;
  }

  async #open(digest: string, fetch: () => Promise<Uint8Array>): Promise<URL> {
    const root = await this.root();
    const dir = `${root}/${digest.slice("sha256:".length)}`;
    // A folder left by an earlier process (a kept cache) is used only if it still matches.
    const kept = await this.#check(dir, digest);
    if (kept) return kept;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    const bytes = await fetch();
    const actual = await digestOf(bytes);
    if (actual !== digest) throw new BundleDigestError(digest, actual);
    const doc = decodeBundle(bytes);
    // Unpacked beside and renamed into place, so a half-written folder is never imported.
    const tmp = `${root}/.tmp-${crypto.randomUUID()}`;
    try {
      for (const [path, text] of Object.entries(doc.files)) {
        const file = `${tmp}/src/${path}`;
        await Deno.mkdir(file.slice(0, file.lastIndexOf("/")), { recursive: true, mode: 0o700 });
        await Deno.writeTextFile(file, text, { mode: 0o600 });
      }
      await Deno.writeFile(`${tmp}/bundle.json`, bytes, { mode: 0o600 });
      await Deno.rename(tmp, dir);
    } catch (e) {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
      // Another node process sharing this cache may have put the same bundle in place first.
      const theirs = await this.#check(dir, digest);
      if (theirs) return theirs;
      throw new BundleError(`cannot unpack bundle ${digest} in ${root}: ${(e as Error).message}`);
    }
    return entryUrl(dir, doc.entry);
  }

  /** The entry URL of an unpacked folder whose bundle and files match `digest`, else undefined. */
  async #check(dir: string, digest: string): Promise<URL | undefined> {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(`${dir}/bundle.json`);
    } catch {
      return undefined;
    }
    if (await digestOf(bytes) !== digest) return undefined;
    let doc: BundleDoc;
    try {
      doc = decodeBundle(bytes);
    } catch {
      return undefined;
    }
    for (const [path, text] of Object.entries(doc.files)) {
      const onDisk = await Deno.readTextFile(`${dir}/src/${path}`).catch(() => undefined);
      if (onDisk !== text) return undefined;
    }
    return entryUrl(dir, doc.entry);
  }

  /** Whether bundle `digest` is unpacked and checked in this process. */
  has(digest: string): boolean {
    return this.#ready.has(digest);
  }

  /** Removes the folder when it was a private temp folder. */
  async close(): Promise<void> {
    if (!this.#owned || !this.#root) return;
    const root = await this.#root.catch(() => undefined);
    if (root) await Deno.remove(root, { recursive: true }).catch(() => {});
  }
}

function entryUrl(dir: string, entry: string): URL {
  const url = new URL(`file://${dir}/src/`);
  return new URL(entry.split("/").map(encodeURIComponent).join("/"), url);
}

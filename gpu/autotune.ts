/**
 * Which matmul kernel an engine uses, and the short autotune that picks the tiled kernel's tile
 * shape on a real GPU.
 *
 * - A CPU adapter (lavapipe, SwiftShader; `DeviceInfo.isCpu`, from the adapter's info) keeps the
 *   register kernel: workgroup memory and barriers are slow there (kernels/matmul.ts).
 * - On a GPU the tiled kernel runs with the tile shape measured fastest on this adapter: every
 *   shape of `TILE_SHAPES` times a square product in the three layouts, and the least total
 *   time wins. The result is cached per adapter in `$XDG_CACHE_HOME/hd-pissa/autotune.json`
 *   (`~/.cache/…` without XDG_CACHE_HOME), keyed by vendor, architecture, description and
 *   `TILED_KERNEL_VERSION`, so it runs once per machine and kernel version.
 *
 * Workers agree: the first process to need a choice takes a lock file next to the cache and
 * tunes; the others wait for its entry and read it, so every worker on a machine uses the same
 * shape. And the choice cannot change any result: every tile shape runs the same FMA chain per
 * output element (kernels/matmul_tiled.ts), so workers on different machines, or a worker that
 * tuned again, still get the same bits. Timing noise picks the speed, never the numbers.
 * @module
 */
import type { DeviceInfo } from "./device.ts";
import type { Gpu } from "./engine.ts";
import { GpuError } from "./errors.ts";
import { matmul, type MatmulLayout } from "./kernels/matmul.ts";
import { DEFAULT_TILE, TILE_SHAPES, TILED_KERNEL_VERSION } from "./kernels/matmul_tiled.ts";
import type { MatmulVariant } from "./recorder.ts";

/** How the engine's matmul was chosen; `note` is the line the log shows. */
export interface MatmulChoice {
  variant: MatmulVariant;
  /** Name of the tiled kernel's tile shape (used when `variant` is tiled, or forced per call). */
  tile: string;
  source: "cpu" | "forced" | "cache" | "tuned";
  note: string;
  /** Milliseconds per candidate shape (the tuning run's, also when read from the cache). */
  timings?: Readonly<Record<string, number>>;
}

export interface AutotuneOptions {
  /** Tune even on a CPU adapter (tests); default only on GPUs. */
  force?: boolean;
  /** Side of the square products timed (default 2048). */
  size?: number;
  /** Shapes to choose among (default all of `TILE_SHAPES`). */
  candidates?: readonly string[];
  /** The cache file (default under the user's cache folder, see the module doc). */
  cacheFile?: string;
}

interface CacheEntry {
  tile: string;
  ms: Record<string, number>;
  size: number;
  at: string;
}

interface CacheFile {
  version: 1;
  entries: Record<string, CacheEntry>;
}

/** The cache key of an adapter (see the module doc). */
export function adapterKey(info: DeviceInfo): string {
  return `${info.vendor}|${info.architecture}|${info.description}|tiled-v${TILED_KERNEL_VERSION}`;
}

/** The default cache file. */
export function defaultCacheFile(): string {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  const base = xdg && xdg !== "" ? xdg : `${Deno.env.get("HOME") ?? "/tmp"}/.cache`;
  return `${base}/hd-pissa/autotune.json`;
}

async function readCache(file: string): Promise<CacheFile> {
  try {
    const parsed = JSON.parse(await Deno.readTextFile(file)) as CacheFile;
    if (parsed?.version === 1 && typeof parsed.entries === "object") return parsed;
  } catch {
    // Missing, unreadable or not JSON: start again; the cache only ever holds measurements,
    // and a folder where it cannot be written is announced by `chooseTile`.
  }
  return { version: 1, entries: {} };
}

async function writeCache(file: string, key: string, entry: CacheEntry): Promise<void> {
  const cache = await readCache(file);
  cache.entries[key] = entry;
  const tmp = `${file}.${Deno.pid}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(cache, null, 2) + "\n");
  await Deno.rename(tmp, file); // atomic: a reader sees the old file or the new one
}

/** Milliseconds of one product: best of three timed submits after a warm-up. */
async function timeProduct(
  gpu: Gpu,
  layout: MatmulLayout,
  size: number,
  tile: string,
): Promise<number> {
  const n = size;
  const a = gpu.zeros([n, n]), b = gpu.zeros([n, n]), c = gpu.tensor([n, n]);
  try {
    const body = (rec: import("./recorder.ts").Recorder) =>
      matmul(rec, layout, c, a, b, { variant: "tiled", tile });
    await gpu.run(body); // compile and warm up
    let best = Infinity;
    for (let t = 0; t < 3; t++) {
      const rec = gpu.record({ label: "autotune" });
      rec.timed("autotune", () => body(rec));
      const res = await rec.submit();
      best = Math.min(best, res.gpuMs ?? res.wallMs);
    }
    return best;
  } finally {
    for (const x of [a, b, c]) gpu.release(x);
  }
}

/** Times every candidate shape (see the module doc); the fastest first. */
export async function tuneTiles(
  gpu: Gpu,
  options: AutotuneOptions = {},
): Promise<{ tile: string; ms: Record<string, number> }> {
  const size = options.size ?? 2048;
  const candidates = options.candidates ?? Object.keys(TILE_SHAPES);
  const ms: Record<string, number> = {};
  for (const tile of candidates) {
    if (!TILE_SHAPES[tile]) throw new GpuError(`autotune: no tile shape named '${tile}'`);
    let total = 0;
    for (const layout of ["NT", "NN", "TN"] as const) {
      total += await timeProduct(gpu, layout, size, tile);
    }
    ms[tile] = total;
  }
  const tile = candidates.reduce((x, y) => (ms[y] < ms[x] ? y : x));
  return { tile, ms };
}

const LOCK_STALE_MS = 120_000;
const LOCK_POLL_MS = 200;

/**
 * The tile shape for this adapter: from the cache, or tuned now under the lock (see the module
 * doc). `log` gets one line saying which.
 */
export async function chooseTile(
  gpu: Gpu,
  options: AutotuneOptions,
  log: (line: string) => void,
): Promise<MatmulChoice> {
  const file = options.cacheFile ?? defaultCacheFile();
  const key = adapterKey(gpu.info);
  const cached = async (): Promise<MatmulChoice | null> => {
    const e = (await readCache(file)).entries[key];
    if (!e || !TILE_SHAPES[e.tile]) return null;
    const note = `matmul: tiled ${e.tile} on ${gpu.info.description} (autotune cache ${file})`;
    return { variant: "tiled", tile: e.tile, source: "cache", note, timings: e.ms };
  };
  const hit = await cached();
  if (hit) {
    log(hit.note);
    return hit;
  }
  const lock = `${file}.lock`;
  for (;;) {
    let step = "mkdir";
    try {
      await Deno.mkdir(file.replace(/\/[^/]*$/, ""), { recursive: true });
      step = "lock";
      await Deno.writeTextFile(lock, String(Deno.pid), { createNew: true });
      break;
    } catch (e) {
      if (step === "mkdir" || !(e instanceof Deno.errors.AlreadyExists)) {
        // No usable cache folder: tune for this process, and say that it was not cached (each
        // process then tunes for itself; the bits do not depend on its choice, see above).
        const { tile, ms } = await tuneTiles(gpu, options);
        const note = `matmul: tiled ${tile} on ${gpu.info.description} (autotuned for this ` +
          `process only: the cache ${file} is not writable: ${(e as Error).message})`;
        log(note);
        return { variant: "tiled", tile, source: "tuned", note, timings: ms };
      }
    }
    // Another process is tuning: wait for its entry, or take over a lock it left behind.
    const stat = await Deno.stat(lock).catch(() => null);
    if (stat?.mtime && Date.now() - stat.mtime.getTime() > LOCK_STALE_MS) {
      await Deno.remove(lock).catch(() => {});
      continue;
    }
    await new Promise((r) => setTimeout(r, LOCK_POLL_MS));
    const other = await cached();
    if (other) {
      log(other.note);
      return other;
    }
  }
  try {
    const again = await cached(); // written between our first look and the lock
    if (again) {
      log(again.note);
      return again;
    }
    const size = options.size ?? 2048;
    log(`matmul: autotuning the tiled kernel on ${gpu.info.description} (${size}³, 3 layouts)`);
    const { tile, ms } = await tuneTiles(gpu, options);
    await writeCache(file, key, { tile, ms, size, at: new Date().toISOString() });
    const times = Object.entries(ms).map(([k, v]) => `${k} ${v.toFixed(2)} ms`).join(", ");
    const note = `matmul: tiled ${tile} on ${gpu.info.description} (autotuned: ${times}; ` +
      `cached in ${file})`;
    log(note);
    return { variant: "tiled", tile, source: "tuned", note, timings: ms };
  } finally {
    await Deno.remove(lock).catch(() => {});
  }
}

/** The choice for a CPU adapter, or one forced by the engine's options (no tuning). */
export function fixedChoice(
  info: DeviceInfo,
  variant: MatmulVariant,
  tile: string | undefined,
): MatmulChoice {
  if (tile !== undefined && !TILE_SHAPES[tile]) {
    throw new GpuError(`matmulTile: no tile shape named '${tile}'`);
  }
  const name = tile ?? DEFAULT_TILE;
  if (info.isCpu && tile === undefined && variant === "register") {
    return {
      variant,
      tile: name,
      source: "cpu",
      note: `matmul: register kernel on the CPU adapter ${info.description} (no autotune)`,
    };
  }
  return {
    variant,
    tile: name,
    source: "forced",
    note: `matmul: ${variant}${variant === "tiled" ? ` ${name}` : ""} on ${info.description} ` +
      `(set by the engine's options)`,
  };
}

/**
 * Checkpoints under `<out>/checkpoints/`: one folder per step, written whole into a temporary
 * folder and renamed into place, so a folder named `step-NNNNNN` is always complete; the latest
 * such folder wins. `state.json` lists the SHA-256 of every file, checked on resume.
 *
 * Contents: `shared.safetensors` (W once, and every adapter pair A_j, B_j), `worker-<k>.safetensors`
 * (worker k's optimizer moments), `state.json` (step, generation, data cursor, seed, config).
 * @module
 */
import { DomainError } from "../../core/errors.ts";
import type { DataCursor } from "../data/batching.ts";

/** A checkpoint that is missing, malformed, or whose bytes do not match its digests. */
export class CheckpointError extends DomainError {
  static override readonly code: string = "CHECKPOINT";
}

export interface CheckpointState {
  version: 1;
  /** The last step whose update every worker applied. */
  applied_step: number;
  generation: number;
  method: string;
  workers: number;
  cursor: DataCursor;
  /** The data order is a pure function of (seed, epoch); the seed is all the RNG state there is. */
  seed: number;
  /** The run's resolved flags (report.json's `config`). */
  config: Record<string, unknown>;
  /** SHA-256 (hex) of each file of the folder but this one. */
  files: Record<string, string>;
  /** Steps of the report so far. */
  steps: unknown[];
  created_at: string;
}

export interface LoadedCheckpoint {
  dir: string;
  state: CheckpointState;
  /** The folder's files (digests checked), by name. */
  files: Map<string, Uint8Array>;
}

const PREFIX = "step-";

export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return [...d].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function stepDirName(step: number): string {
  return `${PREFIX}${String(step).padStart(6, "0")}`;
}

/**
 * Writes a checkpoint atomically: every file into `<root>/.tmp-<step>-<random>/`, flushed, then
 * the folder renamed to `<root>/step-<step>`. Keeps the `keep` newest checkpoints, and clears
 * what interrupted writes left behind.
 */
export async function writeCheckpoint(
  root: string,
  state: Omit<CheckpointState, "files" | "version" | "created_at">,
  files: ReadonlyMap<string, Uint8Array>,
  keep = 2,
): Promise<string> {
  await Deno.mkdir(root, { recursive: true });
  const tmp = `${root}/.tmp-${state.applied_step}-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(tmp);
  try {
    const digests: Record<string, string> = {};
    for (const [name, bytes] of files) {
      if (!/^[A-Za-z0-9_.-]+$/.test(name) || name === "state.json") {
        throw new CheckpointError(`bad checkpoint file name ${name}`);
      }
      digests[name] = await sha256Hex(bytes);
      await writeSynced(`${tmp}/${name}`, bytes);
    }
    const full: CheckpointState = {
      version: 1,
      ...state,
      files: digests,
      created_at: new Date().toISOString(),
    };
    await writeSynced(`${tmp}/state.json`, new TextEncoder().encode(JSON.stringify(full, null, 1)));
    const dest = `${root}/${stepDirName(state.applied_step)}`;
    // A checkpoint of the same step (written before a rollback) is moved aside in one rename
    // before it is deleted: removing it in place could leave a half-deleted folder under a
    // checkpoint's name if this process died meanwhile.
    const old = `${root}/.old-${state.applied_step}-${crypto.randomUUID().slice(0, 8)}`;
    const replaced = await Deno.rename(dest, old).then(() => true, () => false);
    await Deno.rename(tmp, dest);
    await syncDir(root);
    if (replaced) await Deno.remove(old, { recursive: true });
    await prune(root, keep);
    return dest;
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}

async function writeSynced(path: string, bytes: Uint8Array): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    let o = 0;
    while (o < bytes.length) o += await f.write(bytes.subarray(o));
    await f.sync();
  } finally {
    f.close();
  }
}

/** Complete checkpoint folders under `root`, newest (highest step) first. */
export async function listCheckpoints(root: string): Promise<string[]> {
  const dirs: string[] = [];
  try {
    for await (const e of Deno.readDir(root)) {
      if (e.isDirectory && /^step-\d+$/.test(e.name)) dirs.push(e.name);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return dirs.sort().reverse().map((d) => `${root}/${d}`);
}

/** Makes a rename in `dir` durable (its entry is on disk, not only the files it names). */
async function syncDir(dir: string): Promise<void> {
  try {
    const f = await Deno.open(dir, { read: true });
    try {
      await f.sync();
    } finally {
      f.close();
    }
  } catch { /* not supported here: the rename is still atomic, only maybe not yet durable */ }
}

/**
 * Keeps the `keep` newest checkpoints, and removes the temporary folders of writes that never
 * finished (the process died half-way; such folders are never taken as checkpoints).
 */
async function prune(root: string, keep: number): Promise<void> {
  const all = await listCheckpoints(root);
  for (const d of all.slice(Math.max(1, keep))) {
    // Out of the listing in one rename first, for the same reason as in writeCheckpoint.
    const old = `${root}/.old-prune-${crypto.randomUUID().slice(0, 8)}`;
    await Deno.rename(d, old);
    await Deno.remove(old, { recursive: true });
  }
  for await (const e of Deno.readDir(root)) {
    if (e.isDirectory && (e.name.startsWith(".tmp-") || e.name.startsWith(".old-"))) {
      await Deno.remove(`${root}/${e.name}`, { recursive: true }).catch(() => {});
    }
  }
}

/** Reads and verifies one checkpoint folder. */
export async function readCheckpoint(dir: string): Promise<LoadedCheckpoint> {
  let state: CheckpointState;
  try {
    state = JSON.parse(await Deno.readTextFile(`${dir}/state.json`));
  } catch (e) {
    throw new CheckpointError(`${dir}/state.json: ${(e as Error).message}`);
  }
  if (state?.version !== 1 || typeof state.files !== "object" || state.files === null) {
    throw new CheckpointError(`${dir}/state.json is not a checkpoint state of version 1`);
  }
  const files = new Map<string, Uint8Array>();
  for (const [name, digest] of Object.entries(state.files)) {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(`${dir}/${name}`);
    } catch (e) {
      throw new CheckpointError(`${dir}/${name}: ${(e as Error).message}`);
    }
    const actual = await sha256Hex(bytes);
    if (actual !== digest) {
      throw new CheckpointError(
        `${dir}/${name} is corrupt: its SHA-256 is ${actual.slice(0, 16)}…, the checkpoint ` +
          `recorded ${String(digest).slice(0, 16)}…`,
      );
    }
    files.set(name, bytes);
  }
  return { dir, state, files };
}

/** The newest complete checkpoint under `root`, verified; null when there is none. */
export async function latestCheckpoint(root: string): Promise<LoadedCheckpoint | null> {
  const [newest] = await listCheckpoints(root);
  return newest ? await readCheckpoint(newest) : null;
}

/**
 * Node processes started by `init()` on this host.
 *
 * Each is `deno run runtime/node_main.ts --owner-pipe ...` with its stdin a pipe from this
 * process: when this process exits, however it exits, the pipe closes and the node shuts down.
 * Credentials go through the environment, not the command line (which other users can read).
 *
 * A node imports the application's actor modules, so it runs under the application's Deno
 * configuration (import map, workspace, links), not only this project's: by default the
 * `deno.json` that applies to this program's main module.
 * @module
 */
import { type Credentials, CREDENTIALS_ENV } from "./connect.ts";
import { NodeStartError } from "./errors.ts";
import type { Resources } from "./protocol.ts";

/** One node process to start. */
export interface NodeSpec {
  /** Resources it advertises, e.g. `{ gpu: 1 }`. */
  resources?: Resources;
  /** Extra environment variables (e.g. `LP_NUM_THREADS`). */
  env?: Record<string, string>;
}

/** How to start a node process. */
export interface LocalNodeOptions {
  id: string;
  servers: string[];
  system: string;
  credentials: Credentials;
  resources: Resources;
  allowModules: readonly string[];
  /** Module bundle digests it may import. */
  allowBundles?: readonly string[];
  heartbeatMs: number;
  missedHeartbeats: number;
  env?: Record<string, string>;
  /** The Deno configuration file the node runs with (default: {@link defaultNodeConfig}). */
  config?: string;
}

const NODE_MAIN = new URL("./node_main.ts", import.meta.url);
const PROJECT_CONFIG = new URL("../deno.json", import.meta.url);

function isFile(u: URL): boolean {
  try {
    return Deno.statSync(u).isFile;
  } catch {
    return false;
  }
}

/**
 * The configuration node processes run with by default: the `deno.json` (or `deno.jsonc`) in the
 * folder of this program's main module or the nearest folder above it, which is the one Deno
 * itself applied to this program; this project's own when there is none (or the main module is
 * not a file).
 */
export function defaultNodeConfig(): string | undefined {
  let dir: URL;
  try {
    const main = new URL(Deno.mainModule);
    if (main.protocol !== "file:") throw new Error("not a file");
    dir = new URL("./", main);
  } catch {
    return PROJECT_CONFIG.protocol === "file:"
      ? decodeURIComponent(PROJECT_CONFIG.pathname)
      : undefined;
  }
  for (;;) {
    for (const name of ["deno.json", "deno.jsonc"]) {
      const u = new URL(name, dir);
      if (isFile(u)) return decodeURIComponent(u.pathname);
    }
    const up = new URL("../", dir);
    if (up.href === dir.href) break;
    dir = up;
  }
  return isFile(PROJECT_CONFIG) ? decodeURIComponent(PROJECT_CONFIG.pathname) : undefined;
}

/** A node process owned by this process. */
export class LocalNode {
  #child: Deno.ChildProcess;
  #status: Promise<Deno.CommandStatus>;
  #stopping?: Promise<void>;
  exited = false;

  private constructor(readonly id: string, child: Deno.ChildProcess) {
    this.#child = child;
    this.#status = child.status.then((s) => {
      this.exited = true;
      return s;
    });
  }

  /** Process id. */
  get pid(): number {
    return this.#child.pid;
  }

  /** Resolves when the process has exited. */
  get status(): Promise<Deno.CommandStatus> {
    return this.#status;
  }

  /** Starts the process (does not wait for it to join; watch its heartbeat for that). */
  static start(o: LocalNodeOptions): LocalNode {
    const config = o.config ?? defaultNodeConfig();
    const args = [
      "run",
      "-A",
      "--quiet",
      ...(config ? [`--config=${config}`] : []),
      NODE_MAIN.href,
      "--nats",
      o.servers.join(","),
      "--system",
      o.system,
      "--id",
      o.id,
      "--owner-pipe",
      "--heartbeat-ms",
      String(o.heartbeatMs),
      "--missed-heartbeats",
      String(o.missedHeartbeats),
      "--resources",
      JSON.stringify(o.resources),
      ...o.allowModules.flatMap((m) => ["--allow-module", m]),
      ...(o.allowBundles ?? []).flatMap((d) => ["--allow-bundle", d]),
    ];
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(Deno.execPath(), {
        args,
        env: { ...o.env, [CREDENTIALS_ENV]: JSON.stringify(o.credentials) },
        stdin: "piped",
        stdout: "inherit",
        stderr: "inherit",
      }).spawn();
    } catch (e) {
      throw new NodeStartError(`cannot start node ${o.id}: ${(e as Error).message}`, { cause: e });
    }
    return new LocalNode(o.id, child);
  }

  /** True once {@link stop} was called (an exit after that is not a crash). */
  get stopping(): boolean {
    return this.#stopping !== undefined;
  }

  /** Asks the node to shut down (closes its pipe); kills it if it has not exited in time. */
  stop(timeoutMs = 10_000): Promise<void> {
    this.#stopping ??= (async () => {
      try {
        await this.#child.stdin.close();
      } catch { /* already closed */ }
      const timer = setTimeout(() => this.kill("SIGKILL"), timeoutMs);
      await this.#status;
      clearTimeout(timer);
    })();
    return this.#stopping;
  }

  /** Sends a signal (tests use SIGKILL to simulate a crash). */
  kill(signal: Deno.Signal = "SIGKILL") {
    if (this.exited) return;
    try {
      this.#child.kill(signal);
    } catch { /* already gone */ }
  }
}

/**
 * The embedded nats-server of a system started without an address.
 *
 * It listens on free loopback ports (TCP and WebSocket), keeps JetStream data in its own temp
 * folder, and accepts only the credentials generated for it. nats-server does not watch its
 * parent, so a tiny shell watchdog does: its stdin is a pipe from this process, and when this
 * process exits for any reason (SIGKILL included) the pipe closes, `cat` returns, and the
 * watchdog stops the server and removes its folder.
 * @module
 */
import { ServerStartError } from "./errors.ts";
import { inboxPrefixOf, nodePermissions } from "./permissions.ts";

/** Options of {@link EmbeddedServer.start}. */
export interface EmbeddedServerOptions {
  /** Largest message the server accepts (bigger frames are chunked). Default 8 MiB. */
  maxPayload?: number;
  /** Bytes the server buffers for one slow client before dropping it. Default 1 GiB. */
  maxPending?: number;
  /** Enable JetStream (needed by the object store). Default true. */
  jetstream?: boolean;
  /** Also listen for WebSocket clients. Default true. */
  websocket?: boolean;
  /** How long to wait for the server to come up. Default 15 s. */
  startTimeoutMs?: number;
  /**
   * Users for node processes, one per node id, each with the permissions of a node of this
   * system (see permissions.ts). The owner's user keeps full rights. Default: none (nodes use
   * the owner's credentials).
   */
  nodeUsers?: { system: string; ids: string[] };
}

/** A node's identity on the embedded server: its id, and the credentials of its own user. */
export interface NodeIdentity {
  id: string;
  credentials: { user: string; pass: string; inboxPrefix: string };
}

// Arguments: server binary, config, log, private folder. Prints "<watchdog pid> <server pid>".
// Should the watchdog itself be SIGKILLed, setpriv's parent-death signal still stops the server.
const WATCHDOG = `
if command -v setpriv >/dev/null 2>&1; then
  setpriv --pdeathsig TERM "$1" -c "$2" >>"$3" 2>&1 </dev/null &
else
  "$1" -c "$2" >>"$3" 2>&1 </dev/null &
fi
s=$!
trap '' TERM INT HUP
echo "$$ $s"
cat >/dev/null
kill -TERM "$s" 2>/dev/null
wait "$s"
rm -rf "$4"
`;

// Deno kills its own children when it exits, before a watchdog could clean up; so the watchdog
// is started detached (the launcher exits at once), keeping only the pipes.
const LAUNCH = `exec 3<&0; "$@" <&3 3<&- &`;

/** Finds the nats-server binary on PATH or in the usual Debian places. */
export function findNatsServer(): string | undefined {
  const dirs = (Deno.env.get("PATH") ?? "").split(":").concat([
    "/usr/sbin",
    "/usr/bin",
    "/usr/local/bin",
  ]);
  for (const d of dirs) {
    if (!d) continue;
    try {
      const p = `${d}/nats-server`;
      if (Deno.statSync(p).isFile) return p;
    } catch { /* not here */ }
  }
  return undefined;
}

function randomSecret(bytes = 24): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(bytes)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

/** A private nats-server owned by this process. */
export class EmbeddedServer {
  #pipe: WritableStream<Uint8Array>;
  #exited: Promise<unknown>;
  #stopped?: Promise<void>;
  readonly #identities: NodeIdentity[];
  /** Whether node processes get users of their own (see {@link takeNodeIdentity}). */
  readonly hasNodeUsers: boolean;

  private constructor(
    pipe: WritableStream<Uint8Array>,
    exited: Promise<unknown>,
    /** Process id of the watchdog shell. */
    readonly watchdogPid: number,
    /** `nats://127.0.0.1:<port>` */
    readonly url: string,
    /** `ws://127.0.0.1:<port>`, when WebSocket is on. */
    readonly wsUrl: string | undefined,
    /** The generated credentials; clients without them are refused. */
    readonly credentials: { user: string; pass: string },
    /** The server's private folder (config, log, JetStream store). */
    readonly dir: string,
    /** Process id of nats-server itself. */
    readonly pid: number,
    /** The `max_payload` configured. */
    readonly maxPayload: number,
    identities: NodeIdentity[],
  ) {
    this.#pipe = pipe;
    this.#exited = exited;
    this.#identities = identities;
    this.hasNodeUsers = identities.length > 0;
  }

  /** The next unused node identity, or undefined when all are taken (or none were made). */
  takeNodeIdentity(): NodeIdentity | undefined {
    return this.#identities.shift();
  }

  /** Starts a server and waits until it accepts connections. */
  static async start(options: EmbeddedServerOptions = {}): Promise<EmbeddedServer> {
    const bin = findNatsServer();
    if (!bin) {
      throw new ServerStartError(
        "nats-server not found on PATH or in /usr/sbin: install it (Debian: apt-get install nats-server) " +
          "or pass a nats:// URL of an existing server",
      );
    }
    const maxPayload = options.maxPayload ?? 8 * 1024 * 1024;
    const dir = await Deno.makeTempDir({ prefix: "actors-nats-" });
    const credentials = { user: `u${randomSecret(6)}`, pass: randomSecret() };
    const identities: NodeIdentity[] = (options.nodeUsers?.ids ?? []).map((id) => ({
      id,
      credentials: { user: id, pass: randomSecret(), inboxPrefix: inboxPrefixOf(id) },
    }));
    const users = [
      `{ user: ${JSON.stringify(credentials.user)}, password: ${
        JSON.stringify(credentials.pass)
      } }`,
      ...identities.map((n) =>
        `{ user: ${JSON.stringify(n.credentials.user)}, password: ${
          JSON.stringify(n.credentials.pass)
        }, ${nodePermissions(options.nodeUsers!.system, n.id)} }`
      ),
    ];
    const conf = [
      `listen: "127.0.0.1:-1"`,
      `ports_file_dir: ${JSON.stringify(dir)}`,
      `max_payload: ${maxPayload}`,
      `max_pending: ${options.maxPending ?? 1024 * 1024 * 1024}`,
      `write_deadline: "30s"`,
      options.jetstream === false ? "" : `jetstream { store_dir: ${JSON.stringify(`${dir}/js`)} }`,
      options.websocket === false ? "" : `websocket { listen: "127.0.0.1:-1", no_tls: true }`,
      `authorization { users: [\n  ${users.join(",\n  ")}\n] }`,
    ].join("\n");
    const confPath = `${dir}/server.conf`;
    const logPath = `${dir}/server.log`;
    await Deno.writeTextFile(confPath, conf + "\n", { mode: 0o600 });
    const launcher = new Deno.Command("sh", {
      args: [
        "-c",
        LAUNCH,
        "actors-nats-launch",
        "sh",
        "-c",
        WATCHDOG,
        "actors-nats-watchdog",
        bin,
        confPath,
        logPath,
        dir,
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    await launcher.status;
    const pipe = launcher.stdin;
    const lines = launcher.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let pid = 0;
    let watchdogPid = 0;
    // The watchdog holds the other end of stdout: its end of file means the watchdog is done.
    const exited = (async () => {
      let buf = "";
      for (;;) {
        const { value, done } = await lines.read();
        if (done) return;
        buf += value;
        const m = /^(\d+) (\d+)\n/.exec(buf);
        if (m && !pid) {
          watchdogPid = Number(m[1]);
          pid = Number(m[2]);
        }
      }
    })();
    const fail = async (why: string): Promise<never> => {
      let log = "";
      try {
        log = (await Deno.readTextFile(logPath)).split("\n").slice(-15).join("\n");
      } catch { /* no log */ }
      await pipe.close().catch(() => {});
      await exited;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw new ServerStartError(`nats-server did not start: ${why}\n${log}`);
    };
    const deadline = Date.now() + (options.startTimeoutMs ?? 15_000);
    let ports: { nats?: string[]; websocket?: string[] } | undefined;
    while (Date.now() < deadline) {
      for (const e of Deno.readDirSync(dir)) {
        if (e.name.endsWith(".ports")) {
          try {
            ports = JSON.parse(Deno.readTextFileSync(`${dir}/${e.name}`));
          } catch { /* being written */ }
        }
      }
      if (ports?.nats?.length && (options.websocket === false || ports.websocket?.length) && pid) {
        break;
      }
      ports = undefined;
      if (pid && !alive(pid)) return await fail("it exited");
      await new Promise((r) => setTimeout(r, 20));
    }
    if (!ports) return await fail("timed out waiting for it to listen");
    return new EmbeddedServer(
      pipe,
      exited,
      watchdogPid,
      ports.nats![0],
      ports.websocket?.[0],
      credentials,
      dir,
      pid,
      maxPayload,
      identities,
    );
  }

  /** Stops the server (closing the watchdog's pipe), waits for it, removes its folder. */
  stop(): Promise<void> {
    this.#stopped ??= (async () => {
      await this.#pipe.close().catch(() => {});
      const timer = setTimeout(() => {
        for (const p of [this.pid, this.watchdogPid]) {
          try {
            Deno.kill(p, "SIGKILL");
          } catch { /* gone */ }
        }
      }, 10_000);
      await this.#exited;
      clearTimeout(timer);
      await Deno.remove(this.dir, { recursive: true }).catch(() => {});
    })();
    return this.#stopped;
  }
}

/** True while a process with this id exists (and is not a zombie we could see). */
export function alive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !/^\d+ \(.*\) Z /.test(stat);
  } catch {
    return false;
  }
}

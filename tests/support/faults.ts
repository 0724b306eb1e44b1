/**
 * Fault injection for the reliability tests: real processes found by a tag in their
 * environment, a tap on the actor call subjects (to strike at a precise moment of the step
 * protocol), hand-started nats-servers (single, clustered, with any auth block) and node
 * processes, and byte comparisons of the outputs.
 */
import type { Msg, NatsConnection, Subscription } from "@nats-io/nats-core";
import { jetstreamManager } from "@nats-io/jetstream";
import { ObjectStore, type System } from "../../runtime/mod.ts";
import { connectNats } from "../../runtime/connect.ts";
import { FrameInbox } from "../../runtime/wire.ts";

/** Environment variable that marks every process a test starts (children inherit it). */
export const TAG_ENV = "HD_FAULT_TAG";

export const CONFIG = new URL("../../deno.json", import.meta.url).pathname;
export const FINETUNE = new URL("../../examples/finetune.ts", import.meta.url).pathname;
export const NODE_MAIN = new URL("../../runtime/node_main.ts", import.meta.url).pathname;

/** A fresh tag for {@link TAG_ENV}. */
export function newTag(): string {
  return `t${crypto.randomUUID().replaceAll("-", "").slice(0, 16)}`;
}

/** Pids of the live processes whose environment carries `tag` (zombies excluded). */
export function processesWithTag(tag: string): number[] {
  const needle = `${TAG_ENV}=${tag}`;
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      if (/^\d+ \(.*\) [ZX] /.test(stat)) continue;
      const env = new TextDecoder().decode(Deno.readFileSync(`/proc/${e.name}/environ`));
      if (env.split("\0").includes(needle)) out.push(Number(e.name));
    } catch { /* gone, or not ours */ }
  }
  return out;
}

/** Polls `ok` until it holds; throws after `timeoutMs`. */
export async function waitUntil(
  what: string,
  ok: () => boolean | Promise<boolean>,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Waits until no process carries `tag`; returns the stragglers' command lines otherwise. */
export async function leftovers(tag: string, timeoutMs = 20_000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pids = processesWithTag(tag);
    if (pids.length === 0) return [];
    if (Date.now() > deadline) {
      return pids.map((p) => {
        try {
          return `${p}: ${Deno.readTextFileSync(`/proc/${p}/cmdline`).replaceAll("\0", " ")}`;
        } catch {
          return `${p}`;
        }
      });
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** True when both files hold the same bytes. */
export async function sameFile(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** A call as seen on the wire by {@link tapCalls}. */
export interface TappedCall {
  /** The actor id (last token of its subject). */
  actor: string;
  method: string;
  value: unknown;
}

/**
 * Watches every call sent to the actors of `system`, decoded from the wire (a passive
 * subscriber: it answers nothing), on `nc` (default: the system's own connection). Returns the
 * function that stops watching.
 */
export function tapCalls(
  system: Pick<System, "name" | "nc">,
  onCall: (c: TappedCall) => void,
  nc: NatsConnection = system.nc,
): () => void {
  const prefix = `actors.${system.name}.rt.a.`;
  const inbox = new FrameInbox(64 * 1024 * 1024);
  const sub: Subscription = nc.subscribe(`${prefix}*`, {
    callback: (err, msg: Msg) => {
      if (err) return;
      try {
        const m = inbox.accept(msg);
        if (!m || m.meta.k !== "call") return;
        onCall({
          actor: msg.subject.slice(prefix.length),
          method: String(m.meta.m),
          value: m.value,
        });
      } catch { /* not a call frame */ }
    },
  });
  return () => {
    sub.unsubscribe();
    inbox.clear();
  };
}

/** The local node process hosting actor `id` (by the system's directory). */
export function nodeOf(system: System, id: string) {
  const a = system.actors().find((x) => x.id === id && x.state === "up");
  return a ? system.localNodes.find((n) => n.id === a.node) : undefined;
}

/** Free loopback TCP ports (bound and released at once; good enough for a test). */
export function freePorts(n: number): number[] {
  const ls = Array.from({ length: n }, () => Deno.listen({ hostname: "127.0.0.1", port: 0 }));
  const ports = ls.map((l) => (l.addr as Deno.NetAddr).port);
  ls.forEach((l) => l.close());
  return ports;
}

/** A nats-server started by a test, with its own config. */
export interface TestServer {
  url: string;
  /** The monitoring endpoint, when the config asked for one. */
  http?: string;
  pid: number;
  dir: string;
  kill(signal?: Deno.Signal): Promise<void>;
}

/**
 * Starts `nats-server` with `lines` of config (`$DIR` stands for its own folder; listen and
 * ports_file_dir are added when absent) and waits until it accepts connections. `wrap` is put
 * in front of the command line, e.g. to run it in another network namespace
 * (tests/support/netns.ts).
 */
export async function startServer(
  lines: string[],
  tag: string,
  name = "s",
  wrap: string[] = [],
): Promise<TestServer> {
  const dir = await Deno.makeTempDir({ prefix: `hd-nats-${name}-` });
  const conf = lines.map((l) => l.replaceAll("$DIR", dir));
  if (!conf.some((l) => l.startsWith("listen"))) conf.unshift(`listen: "127.0.0.1:-1"`);
  conf.push(`ports_file_dir: ${JSON.stringify(dir)}`);
  await Deno.writeTextFile(`${dir}/server.conf`, conf.join("\n") + "\n");
  const argv = [...wrap, "nats-server", "-c", `${dir}/server.conf`, "-l", `${dir}/server.log`];
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    env: { [TAG_ENV]: tag },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let ports: { nats?: string[]; monitoring?: string[] } = {};
  await waitUntil(`nats-server ${name} listens`, () => {
    for (const e of Deno.readDirSync(dir)) {
      if (!e.name.endsWith(".ports")) continue;
      try {
        ports = JSON.parse(Deno.readTextFileSync(`${dir}/${e.name}`));
      } catch { /* being written */ }
    }
    return (ports.nats?.length ?? 0) > 0;
  }, 15_000);
  let done = false;
  const status = child.status.then(() => done = true);
  return {
    url: ports.nats![0],
    http: ports.monitoring?.[0],
    pid: child.pid,
    dir,
    async kill(signal: Deno.Signal = "SIGTERM") {
      if (!done) {
        try {
          child.kill(signal);
        } catch { /* exited */ }
      }
      await status;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/**
 * The command line that runs the module `main` of this checkout with `args`, as a user runs it
 * (`deno run -A` with the project's config), `wrap` in front (another network namespace).
 */
export function denoArgv(wrap: string[], main: string, args: string[]): string[] {
  return [...wrap, Deno.execPath(), "run", "-A", "--quiet", `--config=${CONFIG}`, main, ...args];
}

/** A node process started by hand (`deno task node`), as on another host. */
export interface HandNode {
  id: string;
  pid: number;
  stop(): Promise<void>;
}

/** Starts `runtime/node_main.ts` with one GPU slot, joining `urls`. */
export function startHandNode(
  o: {
    urls: string;
    id: string;
    tag: string;
    system?: string;
    env?: Record<string, string>;
    /** Drop its output (its join line); errors are shown by default. */
    quiet?: boolean;
    /** Put in front of the command line (another network namespace: tests/support/netns.ts). */
    wrap?: string[];
    /** More flags (credentials, TLS files). */
    args?: string[];
  },
): HandNode {
  const argv = denoArgv(o.wrap ?? [], NODE_MAIN, [
    "--nats",
    o.urls,
    "--system",
    o.system ?? "default",
    "--id",
    o.id,
    "--gpus",
    "1",
    ...o.args ?? [],
  ]);
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    env: { LP_NUM_THREADS: "1", ...o.env, [TAG_ENV]: o.tag },
    stdin: "null",
    stdout: "null",
    stderr: o.quiet ? "null" : "inherit",
  }).spawn();
  let done = false;
  const status = child.status.then(() => done = true);
  return {
    id: o.id,
    pid: child.pid,
    async stop() {
      if (!done) {
        try {
          child.kill("SIGTERM");
        } catch { /* exited */ }
      }
      const t = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* exited */ }
      }, 15_000);
      await status;
      clearTimeout(t);
    },
  };
}

/** Output of a CLI run. */
export interface CliResult {
  code: number;
  signal: Deno.Signal | null;
  stderr: string;
}

/** Runs the finetune CLI to completion with `args` (`wrap` in front, as for startServer). */
export async function runCli(
  args: string[],
  tag: string,
  env: Record<string, string> = {},
  wrap: string[] = [],
): Promise<CliResult> {
  const argv = denoArgv(wrap, FINETUNE, args);
  const out = await new Deno.Command(argv[0], {
    args: argv.slice(1),
    env: { ...env, [TAG_ENV]: tag },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    signal: out.signal,
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/** CLI flags of `tinyOptions` (tests/support/tiny_run.ts) for a run of `steps` steps. */
export function tinyArgs(dir: string, out: string, steps: number, extra: string[] = []): string[] {
  return [
    "--model",
    `${dir}/model`,
    "--data",
    `${dir}/train.jsonl`,
    "--eval",
    "none",
    "--workers",
    "2",
    "--rank",
    "2",
    "--alpha",
    "2",
    "--batch-size",
    "8",
    "--micro-batch",
    "2",
    "--max-steps",
    String(steps),
    "--lr",
    "5e-3",
    "--warmup-ratio",
    "0",
    "--checksum-every",
    "2",
    "--out",
    out,
    ...extra,
  ];
}

/** Rejects with a clear error if `p` takes longer than `ms` (a test must fail, not hang). */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Where a server of {@link startCluster} runs: an address of its own and a command prefix. */
export interface ClusterPlace {
  /** Its server_name. */
  name: string;
  /** The address its routes and clients reach it at; it listens on every address of its host. */
  ip: string;
  /** Put in front of its command line (tests/support/netns.ts). */
  wrap: string[];
  /** Config lines of this server only (e.g. its TLS certificate). */
  extra?: string[];
}

/** More settings of {@link startCluster}'s servers. */
export interface ClusterOptions {
  /** One server per place (on other hosts); default three on loopback ports. */
  places?: ClusterPlace[];
  /** Lines inside the `cluster {}` block (route authorization, route TLS). */
  cluster?: string[];
  /** `user:pass` the routes log in with. */
  routeLogin?: string;
}

/**
 * Three nats-servers on loopback ports (or one per `options.places`, each on ports 4222, 6222
 * (routes) and 8222 (monitoring) of its own address), routed to each other, with clustered
 * JetStream and `auth` (config lines). Resolves once the JetStream meta group has elected a
 * leader.
 */
export async function startCluster(
  tag: string,
  auth: string[] = [],
  options: ClusterOptions = {},
): Promise<TestServer[]> {
  const loop = freePorts(3);
  const places = options.places ?? loop.map((p, i) => ({ name: `s${i}`, ip: "", port: p }));
  const route = (i: number) => {
    const p = places[i] as ClusterPlace & { port?: number };
    return p.port ? `127.0.0.1:${p.port}` : `${p.ip}:6222`;
  };
  const login = options.routeLogin ? `${options.routeLogin}@` : "";
  const servers: TestServer[] = [];
  try {
    for (let i = 0; i < places.length; i++) {
      const p = places[i] as ClusterPlace & { port?: number };
      const lines = p.port ? [`http: "127.0.0.1:-1"`] : [
        `listen: "0.0.0.0:4222"`,
        `client_advertise: "${p.ip}:4222"`,
        `http: "${p.ip}:8222"`,
      ];
      servers.push(
        await startServer(
          [
            `server_name: ${p.name}`,
            ...lines,
            `jetstream { store_dir: "$DIR/js" }`,
            `cluster { name: hd, listen: "${p.port ? route(i) : "0.0.0.0:6222"}", routes: [${
              places.map((_, j) => `"nats-route://${login}${route(j)}"`).join(", ")
            }]${(options.cluster ?? []).map((l) => `, ${l}`).join("")} }`,
            ...auth,
            ...p.extra ?? [],
          ],
          tag,
          p.name,
          p.wrap ?? [],
        ),
      );
      // Its ports file lists every address it listens on; the one that other hosts reach is ip.
      if (!p.port) {
        servers[i] = { ...servers[i], url: `nats://${p.ip}:4222`, http: `http://${p.ip}:8222` };
      }
    }
    await waitUntil("the JetStream meta group has a leader", async () => {
      const seen = await Promise.all(servers.map(metaLeader));
      return seen[0] !== undefined && seen.every((l) => l === seen[0]);
    }, 30_000);
    return servers;
  } catch (e) {
    await Promise.all(servers.map((s) => s.kill()));
    throw e;
  }
}

async function metaLeader(s: TestServer): Promise<string | undefined> {
  try {
    return (await (await fetch(`${s.http}/jsz`)).json()).meta_cluster?.leader;
  } catch {
    return undefined;
  }
}

/**
 * A server of the cluster that may be killed without taking JetStream with it: neither the
 * meta leader nor the server of system `system`'s object store bucket (created here, with one
 * replica, as the system would).
 */
export async function expendableServer(
  servers: TestServer[],
  credentials: { user?: string; pass?: string } = {},
  system = "default",
): Promise<TestServer> {
  const nc = await connectNats(servers.map((s) => s.url), credentials);
  try {
    await ObjectStore.open(nc, `actors_${system}`);
    const info = await (await jetstreamManager(nc)).streams.info(`OBJ_actors_${system}`);
    const keep = new Set([await metaLeader(servers[0]), info.cluster?.leader]);
    return servers.find((_, i) => !keep.has(`s${i}`))!;
  } finally {
    await nc.close();
  }
}

/**
 * Several hosts on one machine, for the multi-host tests: each host is a Linux network namespace
 * with its own interface (a veth pair whose other end is plugged into a bridge of this run), its
 * own address in 10.213.X.0/24 and its own loopback, and each of its processes runs in its own
 * UTS namespace under the host's name, so that `Deno.hostname()` (what a node advertises, what
 * `--load-via auto` compares) differs from host to host as on real machines. The test process
 * itself sits on the bridge at 10.213.X.1, like an operator's machine on the same network.
 *
 * Needs root and iproute2's `ip netns`; without them {@link startLab} throws saying so (the
 * tests fail, they are not skipped). Everything a lab makes is named after its run
 * (`hdns-<pid>-<tag>-<host>`, links `hd<tag>…`), so parallel runs do not collide, and a run that
 * crashed is cleaned up by the next one (its pid is gone).
 */
import { type ClusterOptions, startCluster, type TestServer } from "./faults.ts";

const NS_PREFIX = "hdns-";

/** One host: a network namespace on the lab's bridge. */
export interface Host {
  /** Its name, also its hostname. */
  name: string;
  /** The network namespace. */
  ns: string;
  /** Its address on the lab's network. */
  ip: string;
  /** The veth end on the bridge (cut it to cut the host off). */
  link: string;
  /** The command prefix that runs a program on this host. */
  wrap: string[];
}

/** A set of hosts on one bridge. */
export interface Lab {
  /** The tag every process started here carries in HD_FAULT_TAG (tests/support/faults.ts). */
  tag: string;
  /** The bridge's address (the test process's on the lab's network). */
  gateway: string;
  hosts: Host[];
  host(name: string): Host;
  /** Cuts the host off the network (its link goes down; packets are lost, not refused). */
  cut(host: Host): Promise<void>;
  /** Plugs it back in. */
  restore(host: Host): Promise<void>;
  /** SIGKILLs every process of the host (its nats-server, its nodes); returns their pids. */
  killHost(host: Host): Promise<number[]>;
  /** Kills every process, deletes the namespaces and links; safe to call twice. */
  teardown(): Promise<void>;
}

async function ip(args: string[], what = `ip ${args.join(" ")}`): Promise<string> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("ip", { args, stdout: "piped", stderr: "piped" }).output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(
        "the multi-host tests need iproute2's `ip` (Debian/Ubuntu: apt-get install -y iproute2)",
      );
    }
    throw e;
  }
  if (!out.success) {
    throw new Error(`${what} failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** Throws a clear error unless this process may make network namespaces. */
export function requireNetns(): void {
  if (Deno.uid() !== 0) {
    throw new Error(
      "the multi-host tests make hosts as Linux network namespaces (`ip netns add`), which " +
        `needs root; this process runs as uid ${Deno.uid()}. Run them as root (CI does).`,
    );
  }
}

function alive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

async function pidsIn(ns: string): Promise<number[]> {
  const out = await ip(["netns", "pids", ns]).catch(() => "");
  return out.split(/\s+/).filter((p) => /^\d+$/.test(p)).map(Number);
}

function killAll(pids: number[]) {
  for (const p of pids) {
    try {
      Deno.kill(p, "SIGKILL");
    } catch { /* already gone */ }
  }
}

async function removeRun(run: string, namespaces: string[]) {
  for (const ns of namespaces) killAll(await pidsIn(ns));
  const links = (await ip(["-o", "link", "show"]).catch(() => ""))
    .split("\n").map((l) => /^\d+: ([^:@ ]+)/.exec(l)?.[1]).filter((n): n is string =>
      n !== undefined && n.startsWith(`hd${run}`)
    );
  // The bridge last: deleting a veth end removes its peer in the namespace as well.
  for (const l of links.sort((a, b) => Number(a.endsWith("br")) - Number(b.endsWith("br")))) {
    await ip(["link", "del", l]).catch(() => {});
  }
  for (const ns of namespaces) await ip(["netns", "del", ns]).catch(() => {});
}

/** Removes what runs that are no longer alive left behind (their pid is in the names). */
export async function cleanStale(): Promise<void> {
  const runs = new Map<string, string[]>();
  for (const line of (await ip(["netns", "list"])).split("\n")) {
    const ns = line.split(" ")[0];
    const m = /^hdns-(\d+)-([0-9a-f]{6})-/.exec(ns);
    if (!m || alive(Number(m[1]))) continue;
    runs.set(m[2], [...runs.get(m[2]) ?? [], ns]);
  }
  for (const [run, namespaces] of runs) await removeRun(run, namespaces);
}

/** A /24 in 10.213.0.0/16 that no interface of this machine uses yet. */
async function freeSubnet(): Promise<number> {
  const used = await ip(["-4", "-o", "addr", "show"]);
  for (let tries = 0; tries < 100; tries++) {
    const x = 1 + Math.floor(Math.random() * 254);
    if (!used.includes(` 10.213.${x}.`)) return x;
  }
  throw new Error("no free 10.213.X.0/24 subnet for the lab (100 tries)");
}

/**
 * Makes one host per name (at most 200) on a fresh bridge. Every process a host runs through
 * its `wrap` carries `tag` in HD_FAULT_TAG (tests/support/faults.ts) when the caller sets it, as the faults helpers do.
 */
export async function startLab(names: string[], tag: string): Promise<Lab> {
  requireNetns();
  await cleanStale();
  const run = crypto.randomUUID().replaceAll("-", "").slice(0, 6);
  const x = await freeSubnet();
  const bridge = `hd${run}br`;
  const hosts: Host[] = names.map((name, i) => {
    const ns = `${NS_PREFIX}${Deno.pid}-${run}-${name}`;
    return {
      name,
      ns,
      ip: `10.213.${x}.${11 + i}`,
      link: `hd${run}v${i}`,
      // `ip netns exec` and `unshare` exec the command, so the pid a test gets is the program's.
      wrap: [
        "ip",
        "netns",
        "exec",
        ns,
        "unshare",
        "--uts",
        "sh",
        "-c",
        'hostname "$0" && exec "$@"',
        name,
      ],
    };
  });
  const namespaces = hosts.map((h) => h.ns);
  let done = false;
  const teardown = async () => {
    if (done) return;
    done = true;
    await removeRun(run, namespaces);
  };
  try {
    try {
      await ip(["netns", "add", hosts[0].ns]);
    } catch (e) {
      throw new Error(
        `cannot make a network namespace (\`ip netns add\`); the multi-host tests need it: ${
          (e as Error).message
        }`,
      );
    }
    for (const h of hosts.slice(1)) await ip(["netns", "add", h.ns]);
    await ip(["link", "add", bridge, "type", "bridge"]);
    await ip(["addr", "add", `10.213.${x}.1/24`, "dev", bridge]);
    await ip(["link", "set", bridge, "up"]);
    for (const h of hosts) {
      await ip(["link", "add", h.link, "type", "veth", "peer", "name", "eth0", "netns", h.ns]);
      await ip(["link", "set", h.link, "master", bridge, "up"]);
      await ip(["-n", h.ns, "addr", "add", `${h.ip}/24`, "dev", "eth0"]);
      await ip(["-n", h.ns, "link", "set", "eth0", "up"]);
      await ip(["-n", h.ns, "link", "set", "lo", "up"]);
    }
  } catch (e) {
    await teardown();
    throw e;
  }
  return {
    tag,
    gateway: `10.213.${x}.1`,
    hosts,
    host(name: string) {
      const h = hosts.find((h) => h.name === name);
      if (!h) throw new Error(`no host ${name} in this lab (${names.join(", ")})`);
      return h;
    },
    async cut(h: Host) {
      await ip(["link", "set", h.link, "down"]);
    },
    async restore(h: Host) {
      await ip(["link", "set", h.link, "up"]);
    },
    async killHost(h: Host) {
      const pids = await pidsIn(h.ns);
      killAll(pids);
      return pids;
    },
    teardown,
  };
}

/**
 * One nats-server on each of `hosts`, routed into one cluster with JetStream (ports 4222, 6222
 * and 8222 of each host's address), with `auth` config lines; `extra` adds lines per host.
 */
export function startHostServers(
  lab: Lab,
  hosts: Host[],
  auth: string[],
  options: Omit<ClusterOptions, "places"> & { extra?: (h: Host) => string[] } = {},
): Promise<TestServer[]> {
  return startCluster(lab.tag, auth, {
    ...options,
    places: hosts.map((h) => ({ name: h.name, ip: h.ip, wrap: h.wrap, extra: options.extra?.(h) })),
  });
}

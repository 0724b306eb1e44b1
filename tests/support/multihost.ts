/**
 * The fine-tuning setup of the multi-host tests, as README.md "Running on several hosts" lays
 * it out: hosts made by tests/support/netns.ts, a nats-server on every host (one cluster, routes
 * that log in, JetStream, a user and password for clients), a node with one GPU slot on each GPU
 * host, and the finetune CLI on the driver's host, which has the model folder; the workers get
 * the weights through the object store. The same run on one host (the private cluster of
 * `runFinetune`) gives the reference bits.
 */
import { runFinetune } from "../../actors/job.ts";
import { type HandNode, runCli, startHandNode, type TestServer, tinyArgs } from "./faults.ts";
import { type Host, type Lab, startHostServers, startLab } from "./netns.ts";
import { tinyOptions } from "./tiny_run.ts";

const quiet = { log: () => {}, isTty: false, progress: () => {} };

/** The hosts, servers and nodes of one multi-host test. */
export interface TrainingLab {
  lab: Lab;
  driver: Host;
  gpus: Host[];
  servers: TestServer[];
  nodes: HandNode[];
  /** What clients log in with. */
  user: string;
  pass: string;
  /** NATS_USER/NATS_PASSWORD for the node processes and the CLI. */
  env: Record<string, string>;
  /** The client URL a process on host `from` joins by (its own host's server). */
  urls(from: Host): string;
  /** Starts a node with one GPU slot on `h`, connected to its own host's server. */
  startNode(h: Host, id?: string): HandNode;
  /** Stops the nodes and tears the lab down. */
  stop(): Promise<void>;
}

/**
 * A lab with a driver host `drv` and GPU hosts `gpu1..gpuN`, a nats-server on each, and a node on
 * the first `nodes` GPU hosts (default all).
 */
export async function startTrainingLab(
  tag: string,
  gpuHosts: number,
  options: {
    nodes?: number;
    /** The servers' client auth block, given the user and password (default: that one user). */
    auth?: (user: string, pass: string) => string[];
    /** Lines inside every server's `cluster {}` block (route TLS). */
    clusterLines?: string[];
    /** Runs once the hosts exist, before the servers start (to make their certificate). */
    prepare?: (lab: Lab) => Promise<void>;
    /** More flags of the nodes (`--allow-module`). */
    nodeArgs?: string[];
    /** More environment for the nodes and the CLI (NATS_TLS_CA). */
    env?: Record<string, string>;
  } = {},
): Promise<TrainingLab> {
  const names = ["drv", ...Array.from({ length: gpuHosts }, (_, i) => `gpu${i + 1}`)];
  const lab = await startLab(names, tag);
  const user = "hd";
  const pass = crypto.randomUUID();
  const routePass = crypto.randomUUID();
  const nodes: HandNode[] = [];
  let servers: TestServer[] = [];
  const stop = async () => {
    await Promise.all(nodes.map((n) => n.stop()));
    await Promise.all(servers.map((s) => s.kill()));
    await lab.teardown();
  };
  try {
    await options.prepare?.(lab);
    servers = await startHostServers(
      lab,
      lab.hosts,
      options.auth?.(user, pass) ?? [`authorization { user: "${user}", password: "${pass}" }`],
      {
        cluster: [
          `authorization { user: "route", password: "${routePass}" }`,
          ...options.clusterLines ?? [],
        ],
        routeLogin: `route:${routePass}`,
      },
    );
  } catch (e) {
    await stop();
    throw e;
  }
  const env = { NATS_USER: user, NATS_PASSWORD: pass, ...options.env };
  // Each process connects to its own host's server only, and learns the others from it (for
  // failover): a client that picked a server on another host at random would lose its
  // heartbeats whenever that host's link is cut, and look dead itself.
  const urls = (_from: Host) => "nats://127.0.0.1:4222";
  const gpus = lab.hosts.slice(1);
  const startNode = (h: Host, id = h.name) => {
    const n = startHandNode({
      urls: urls(h),
      id,
      tag,
      env,
      wrap: h.wrap,
      quiet: true,
      args: options.nodeArgs,
    });
    nodes.push(n);
    return n;
  };
  for (const h of gpus.slice(0, options.nodes ?? gpus.length)) startNode(h);
  return {
    lab,
    driver: lab.hosts[0],
    gpus,
    servers,
    nodes,
    user,
    pass,
    env,
    urls,
    startNode,
    stop,
  };
}

/** The tiny run of `steps` steps on one host (the private cluster); returns its --out. */
export async function oneHostRun(
  dir: string,
  steps: number,
  over: Parameters<typeof tinyOptions>[1] = {},
): Promise<string> {
  const o = tinyOptions(dir, { out: `${dir}/onehost`, eval: null, maxSteps: steps, ...over });
  await runFinetune(o, quiet);
  return o.out;
}

/**
 * Runs the finetune CLI on the driver's host of `t` (or on `from`), joined to the cluster with
 * `--nats`.
 */
export function driverRun(
  t: TrainingLab,
  dir: string,
  out: string,
  steps: number,
  extra: string[] = [],
  env: Record<string, string> = t.env,
  from: Host = t.driver,
) {
  return runCli(
    tinyArgs(dir, out, steps, ["--nats", t.urls(from), ...extra]),
    t.lab.tag,
    env,
    from.wrap,
  );
}

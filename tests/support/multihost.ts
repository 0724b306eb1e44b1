/**
 * The fine-tuning setup of the multi-host tests, as README.md "Running on several hosts" lays
 * it out: hosts made by tests/support/netns.ts, a nats-server on every host (one cluster, routes
 * that log in, JetStream, a user and password for clients), a node with one GPU slot on each GPU
 * host, and the finetune CLI on the driver's host, which has the model folder; the workers get
 * the weights through the object store. The same run on one host (the private cluster of
 * `runFinetune`) gives the reference bits.
 */
import assert from "node:assert/strict";
import type { NatsConnection } from "@nats-io/nats-core";
import { runFinetune } from "../../actors/job.ts";
import { connectNats } from "../../runtime/connect.ts";
import {
  type CliResult,
  type HandNode,
  leftovers,
  newTag,
  runCli,
  sameFile,
  startHandNode,
  tapCalls,
  type TappedCall,
  type TestServer,
  tinyArgs,
  within,
} from "./faults.ts";
import { type Host, type Lab, startHostServers, startLab } from "./netns.ts";
import { tinyOptions, writeTinySetup } from "./tiny_run.ts";

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
  /** A connection of the test process (as an operator's machine, on the bridge) to every server. */
  connect(): Promise<NatsConnection>;
  /** Stops the nodes and tears the lab down. */
  stop(): Promise<void>;
}

/** How {@link startTrainingLab} sets up its servers and nodes. */
export interface TrainingLabOptions {
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
}

/**
 * A lab with a driver host `drv` and GPU hosts `gpu1..gpuN`, a nats-server on each, and a node on
 * the first `nodes` GPU hosts (default all).
 */
export async function startTrainingLab(
  tag: string,
  gpuHosts: number,
  options: TrainingLabOptions = {},
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
    connect: () => connectNats(servers.map((s) => s.url), { user, pass }),
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

/** The flags that make the runs here write a checkpoint every 2 steps. */
export const CKPT = ["--checkpoint-every", "2"];

/** One multi-host scenario, as {@link withScenario} sets it up. */
export interface Scenario {
  /** The scenario's folder, with the tiny setup (tests/support/tiny_run.ts) in it. */
  dir: string;
  /** The tag of every process it starts. */
  tag: string;
  /** The steps of its runs. */
  steps: number;
  /** The one-host run's --out: the reference bits. */
  ref: string;
  /** The --out of its runs across hosts. */
  out: string;
  /** Its hosts, servers and nodes. */
  t: TrainingLab;
}

/**
 * Runs `body` in a fresh scenario: a folder (`prefix`…) with the tiny setup, the one-host run of
 * `steps` steps (`reference`: its options over the defaults) and a lab of `gpuHosts` GPU hosts
 * (`lab`: its options, given the folder). Then, whatever happened, stops the lab, asserts that no
 * process of the scenario is left and removes the folder.
 */
export async function withScenario<T>(
  prefix: string,
  o: {
    steps: number;
    gpuHosts: number;
    reference?: Parameters<typeof tinyOptions>[1];
    lab?: TrainingLabOptions | ((dir: string) => TrainingLabOptions);
  },
  body: (s: Scenario) => Promise<T>,
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix });
  const tag = newTag();
  let t: TrainingLab | undefined;
  try {
    await writeTinySetup(dir);
    const ref = await oneHostRun(dir, o.steps, o.reference);
    t = await startTrainingLab(tag, o.gpuHosts, typeof o.lab === "function" ? o.lab(dir) : o.lab);
    return await body({ dir, tag, steps: o.steps, ref, out: `${dir}/hosts`, t });
  } finally {
    await t?.stop();
    assert.deepEqual(await leftovers(tag), []);
    await Deno.remove(dir, { recursive: true });
  }
}

/** What {@link runAtCall} does during the run. */
export interface AtCall<R> {
  /** The first call of this method (of step `step`, when given) sets off `act`. */
  method: string;
  step?: number;
  /** The fault; runs once. */
  act: () => R;
  /** Sees every call first (to add a host as the run goes). */
  watch?: (c: TappedCall) => void;
  /** Runs once the CLI has ended, before what `act` returned is awaited (ends a fault it holds). */
  settle?: () => void;
}

/**
 * Runs the finetune CLI of the scenario on the driver's host (`extra` flags, 150 s at most) while
 * a connection of the test process watches the calls from the bridge, as an operator's machine
 * would, and sets off `at.act`. Once the CLI has ended, awaits what `act` returned. Returns the
 * CLI's result and what `act` returned (undefined: no such call went out).
 */
export async function runAtCall<R>(
  s: Scenario,
  extra: string[],
  at: AtCall<R>,
): Promise<{ r: CliResult; fired: R | undefined }> {
  const nc = await s.t.connect();
  let done = false;
  let fired: R | undefined;
  const stopTap = tapCalls({ name: "default", nc }, (c) => {
    at.watch?.(c);
    if (done || c.method !== at.method) return;
    if (at.step !== undefined && (c.value as { step?: number }).step !== at.step) return;
    done = true;
    fired = at.act();
  });
  try {
    const r = await within(
      driverRun(s.t, s.dir, s.out, s.steps, extra),
      150_000,
      "the run across hosts",
    );
    return { r, fired };
  } finally {
    stopTap();
    at.settle?.();
    await fired;
    await nc.close();
  }
}

/** The fields of report.json the multi-host tests read. */
export interface HostsReport {
  steps: { step: number }[];
  recoveries: number;
  weights_loaded_via: string[];
}

/** Asserts that the run `r` ended well and went through every step; returns its report.json. */
export async function finishedReport(s: Scenario, r: CliResult): Promise<HostsReport> {
  assert.equal(r.code, 0, `the finetune CLI failed:\n${r.stderr}`);
  const report: HostsReport = JSON.parse(await Deno.readTextFile(`${s.out}/report.json`));
  assert.deepEqual(report.steps.map((x) => x.step), Array.from({ length: s.steps }, (_, i) => i));
  return report;
}

/** Asserts that the scenario's run ended on the one-host run's bits. */
export async function assertSameBits(
  s: Scenario,
  what = "the weights equal the one-host run's",
): Promise<void> {
  assert.ok(await sameFile(`${s.ref}/model.safetensors`, `${s.out}/model.safetensors`), what);
}

/** Asserts that a run that stopped short left no report.json. */
export async function assertNoReport(s: Scenario, what: string): Promise<void> {
  await Deno.stat(`${s.out}/report.json`).then(() => assert.fail(what), () => {});
}

/**
 * Asserts that the run `r` stopped because a worker could not be placed again (with the advice to
 * resume), before it spent its rollbacks.
 */
export function assertWorkersUnavailable(r: CliResult): void {
  assert.equal(r.code, 1, `the run stopped with an error:\n${r.stderr}`);
  assert.match(
    r.stderr,
    /finetune: WorkersUnavailableError: worker \d \(needs \{"gpu":1\}\) cannot be placed again/,
  );
  assert.doesNotMatch(r.stderr, /giving up after/, "it did not spend its rollbacks");
}

/**
 * Runs the scenario's run again with `--resume` (`extra` flags, from the driver's host or `from`)
 * and asserts that it continues from a checkpoint to the one-host run's bits.
 */
export async function resumeToSameBits(s: Scenario, extra: string[], from?: Host): Promise<void> {
  const resumed = await within(
    driverRun(s.t, s.dir, s.out, s.steps, [...extra, "--resume", s.out], s.t.env, from),
    150_000,
    "the resumed run",
  );
  assert.equal(resumed.code, 0, `the resumed run failed:\n${resumed.stderr}`);
  assert.match(resumed.stderr, /resumed from .*step-0000\d\d at step \d/);
  await assertSameBits(s, "the resumed run ends on the one-host run's bits");
}

/**
 * A node process: joins a system on a NATS server or cluster and hosts actors.
 *
 * ```sh
 * deno task node --nats nats://head:4222 --gpus 1
 * deno task node --nats ws://head:8080 --system job7 --resources '{"ram_gb": 64}' \
 *   --allow-module file:///srv/my-actors/
 * deno task node --nats nats://head:4222 --allow-bundle sha256:<hex of a shipped module bundle>
 * ```
 *
 * Credentials: `--user/--pass`, `--token`, `--creds FILE`, TLS with `--tls-ca/--tls-cert/
 * --tls-key`; secrets may instead come from NATS_USER, NATS_PASSWORD, NATS_TOKEN,
 * NATS_NKEY_SEED or NATS_NKEY_FILE, NATS_CREDS, NATS_TLS_* (or, for nodes an `init()` starts,
 * from the environment variable it sets), or the URL (`nats://user:pass@host`). Stops on SIGINT/SIGTERM, and with
 * `--owner-pipe` when its stdin closes (its owner exited).
 * @module
 */
import { z } from "zod";
import { defineFlags, exitWithFlagError, FlagError, parseInteger } from "../cli/flags.ts";
import {
  type Credentials,
  credentialsFromEnv,
  natsEnvCredentials,
  splitUrlCredentials,
} from "./connect.ts";
import { DIGEST_PATTERN } from "./bundles.ts";
import { inboxPrefixOf } from "./permissions.ts";
import { type Resources, resourcesSchema } from "./protocol.ts";
import { System } from "./system.ts";

const NET = "cluster";
const SECRETS = "credentials (else NATS_* variables, or the URL's user:pass@)";
const LIVENESS = "liveness";

const FLAGS = defineFlags({
  name: "node",
  about: "A node process: joins a system on a NATS server or cluster and hosts actors.",
  usage: "deno task node --nats URL[,URL...] [flags]",
  groups: [NET, SECRETS, LIVENESS],
  flags: {
    nats: {
      type: "string",
      required: true,
      metavar: "URL[,URL...]",
      help: "NATS servers: nats://, tls://, ws:// or wss://",
      group: NET,
    },
    system: {
      type: "string",
      default: "default",
      metavar: "NAME",
      help: "the system to join",
      group: NET,
    },
    id: {
      type: "string",
      default: () => `n${crypto.randomUUID().slice(0, 8)}`,
      defaultText: "n<random>",
      metavar: "ID",
      help: "this node's id",
      group: NET,
    },
    gpus: {
      type: "custom",
      parse: (raw: string, flag: string): number | "auto" => {
        if (raw === "auto") return "auto";
        try {
          return parseInteger(flag, raw, { min: 0 });
        } catch {
          throw new FlagError(`--${flag} must be a count or "auto", got ${raw}`, flag);
        }
      },
      schema: z.union([z.literal("auto"), z.number().int().min(0)]),
      default: null,
      metavar: "N|auto",
      help: "GPU slots offered (auto: 1 if a WebGPU adapter is found, else 0)",
      group: NET,
    },
    resources: {
      type: "custom",
      parse: (raw: string, flag: string): Resources => {
        let r: unknown;
        try {
          r = JSON.parse(raw);
        } catch {
          throw new FlagError(`--${flag} is not JSON: ${raw}`, flag);
        }
        const ok = resourcesSchema.safeParse(r);
        if (!ok.success) {
          throw new FlagError(`--${flag} must be a JSON object of numbers >= 0, got ${raw}`, flag);
        }
        return ok.data;
      },
      schema: resourcesSchema,
      default: null,
      metavar: "JSON",
      help: 'other resources offered, e.g. {"ram_gb": 64}',
      group: NET,
    },
    "allow-module": {
      type: "list",
      repeat: true,
      separator: null,
      metavar: "PREFIX",
      help: "also load actor modules from URLs under PREFIX",
      group: NET,
    },
    "allow-bundle": {
      type: "list",
      repeat: true,
      separator: null,
      metavar: "sha256:HEX",
      help: "also import the module bundle with this digest (one a program shipped)",
      group: NET,
    },
    "bundle-cache": {
      type: "string",
      default: null,
      metavar: "DIR",
      help: "keep unpacked module bundles in DIR (default: a private temp folder)",
      group: NET,
    },
    user: {
      type: "string",
      default: null,
      metavar: "U",
      help: "user (with --pass)",
      group: SECRETS,
    },
    pass: { type: "string", default: null, metavar: "P", help: "password", group: SECRETS },
    token: { type: "string", default: null, metavar: "T", help: "token", group: SECRETS },
    creds: {
      type: "string",
      default: null,
      metavar: "FILE",
      help: "credentials file",
      group: SECRETS,
    },
    "tls-ca": { type: "string", default: null, metavar: "FILE", help: "TLS CA", group: SECRETS },
    "tls-cert": {
      type: "string",
      default: null,
      metavar: "FILE",
      help: "TLS client certificate",
      group: SECRETS,
    },
    "tls-key": {
      type: "string",
      default: null,
      metavar: "FILE",
      help: "TLS client key",
      group: SECRETS,
    },
    "heartbeat-ms": {
      type: "number",
      gt: 0,
      default: 500,
      help: "ms between heartbeats",
      group: LIVENESS,
    },
    "missed-heartbeats": {
      type: "int",
      min: 1,
      default: 3,
      help: "heartbeats missed before a node counts as gone",
      group: LIVENESS,
    },
    "owner-grace-ms": {
      type: "number",
      min: 0,
      default: 10_000,
      help: "ms the actors here outlive their owner once it counts as gone (a partition that " +
        "heals within it costs them nothing)",
      group: LIVENESS,
    },
    "owner-pipe": {
      type: "boolean",
      help: "stop when stdin closes (the process that started this one exited)",
      group: LIVENESS,
    },
  },
});

/**
 * GPUs for `--gpus auto`: 1 when WebGPU offers a hardware adapter, 0 when it offers only a CPU
 * one (lavapipe, SwiftShader), which is no GPU to place a worker on.
 */
async function countGpus(): Promise<number> {
  // Vulkan loaders warn without a runtime folder; any writable one will do.
  if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", Deno.makeTempDirSync());
  const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
  if (!gpu) return 0;
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (e) {
    console.error(`node: --gpus auto: requesting a GPU adapter failed (${(e as Error).message})`);
    return 0;
  }
  if (!adapter) return 0;
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  const cpu = info.isFallbackAdapter === true ||
    /llvmpipe|lavapipe|swiftshader/i.test(`${info.description} ${info.device}`);
  if (cpu) console.error(`node: --gpus auto: the only adapter runs on the CPU; counting 0 GPUs`);
  return cpu ? 0 : 1;
}

async function main() {
  const { options: o } = FLAGS.main();
  for (const d of o.allowBundle) {
    if (!DIGEST_PATTERN.test(d)) {
      exitWithFlagError(
        "node",
        new FlagError(`--allow-bundle must be sha256: and 64 hex digits, got ${d}`, "allow-bundle"),
      );
    }
  }
  let resources: Resources = o.resources ?? {};
  if (o.gpus !== null) {
    resources = { ...resources, gpu: o.gpus === "auto" ? await countGpus() : o.gpus };
  }
  // Flags first, then what an owner handed over, then the usual NATS_* variables.
  const owner = credentialsFromEnv();
  const std = natsEnvCredentials();
  const tls = o.tlsCa || o.tlsCert || o.tlsKey
    ? {
      caFile: o.tlsCa ?? undefined,
      certFile: o.tlsCert ?? undefined,
      keyFile: o.tlsKey ?? undefined,
    }
    : owner.tls ?? std.tls;
  const split = splitUrlCredentials(o.nats.split(","), {
    user: o.user ?? owner.user ?? std.user,
    pass: o.pass ?? owner.pass ?? std.pass,
    token: o.token ?? owner.token ?? std.token,
    credsFile: o.creds ?? owner.credsFile ?? std.credsFile,
    nkeySeed: owner.nkeySeed ?? std.nkeySeed,
    tls,
    // A node user may read only its own inbox (permissions.ts), on an embedded server and on a
    // cluster set up with `deno task cluster-creds` alike.
    inboxPrefix: owner.inboxPrefix ?? inboxPrefixOf(o.id),
  });
  const credentials: Credentials = split.credentials;
  const system = await System.join({
    servers: split.servers,
    credentials,
    system: o.system,
    nodeId: o.id,
    resources,
    placeable: true,
    allowModules: o.allowModule,
    allowBundles: o.allowBundle,
    bundleCache: o.bundleCache ?? undefined,
    heartbeatMs: o.heartbeatMs,
    missedHeartbeats: o.missedHeartbeats,
    ownerGraceMs: o.ownerGraceMs,
    maxFrameBytes: 1024 * 1024 * 1024,
  });
  if (!o.ownerPipe) {
    console.error(
      `node ${o.id} joined system ${o.system} at ${o.nats} with ${JSON.stringify(resources)}`,
    );
  }
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    // An owner-less node must not linger if a graceful shutdown hangs.
    setTimeout(() => Deno.exit(1), 15_000);
    await system.shutdown();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  if (o.ownerPipe) {
    // The owner keeps our stdin open; end of file means it is gone (even if it was SIGKILLed).
    const buf = new Uint8Array(256);
    while ((await Deno.stdin.read(buf)) !== null) { /* nothing is sent on it */ }
    await stop();
  }
}

/** Whether the server turned the connection down for its credentials. */
function refusedCredentials(e: unknown): boolean {
  for (let c: unknown = e; c instanceof Error; c = c.cause) {
    if (c.name === "AuthorizationError" || /authorization violation/i.test(c.message)) return true;
  }
  return false;
}

if (import.meta.main) {
  main().catch((e) => {
    const msg = e instanceof Error ? e.message : String(e);
    if (refusedCredentials(e)) {
      console.error(
        `node: the NATS server refused this node's credentials (${msg}): give the key file made ` +
          "for this node id and system (NATS_NKEY_FILE, --creds, NATS_USER/NATS_PASSWORD, ...)",
      );
    } else {
      console.error(`node: ${msg}`);
    }
    Deno.exit(1);
  });
}

/**
 * A node process: joins a system on a NATS server or cluster and hosts actors.
 *
 * ```sh
 * deno task node --nats nats://head:4222 --gpus 1
 * deno task node --nats ws://head:8080 --system job7 --resources '{"ram_gb": 64}' \
 *   --allow-module file:///srv/my-actors/
 * ```
 *
 * Credentials: `--user/--pass`, `--token`, `--creds FILE`, TLS with `--tls-ca/--tls-cert/
 * --tls-key`; secrets may instead come from NATS_USER, NATS_PASSWORD, NATS_TOKEN,
 * NATS_NKEY_SEED or NATS_NKEY_FILE, NATS_CREDS, NATS_TLS_* (or, for nodes an `init()` starts,
 * from the environment variable it sets), or the URL (`nats://user:pass@host`). Stops on SIGINT/SIGTERM, and with
 * `--owner-pipe` when its stdin closes (its owner exited).
 * @module
 */
import { parseArgs } from "node:util";
import {
  type Credentials,
  credentialsFromEnv,
  natsEnvCredentials,
  splitUrlCredentials,
} from "./connect.ts";
import type { Resources } from "./protocol.ts";
import { System } from "./system.ts";

const USAGE = `usage: deno task node --nats URL[,URL...] [--gpus N|auto] [--resources JSON]
  [--system NAME] [--id ID] [--allow-module PREFIX]... [--user U --pass P | --token T | --creds FILE]
  [--tls-ca FILE --tls-cert FILE --tls-key FILE] [--heartbeat-ms 500] [--missed-heartbeats 3]`;

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

function fail(message: string): never {
  console.error(`node: ${message}\n${USAGE}`);
  Deno.exit(2);
}

async function main() {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      nats: { type: "string" },
      system: { type: "string", default: "default" },
      id: { type: "string" },
      gpus: { type: "string" },
      resources: { type: "string" },
      "allow-module": { type: "string", multiple: true, default: [] },
      user: { type: "string" },
      pass: { type: "string" },
      token: { type: "string" },
      creds: { type: "string" },
      "tls-ca": { type: "string" },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
      "heartbeat-ms": { type: "string", default: "500" },
      "missed-heartbeats": { type: "string", default: "3" },
      "owner-pipe": { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (!values.nats) fail("--nats URL is required");
  let resources: Resources = {};
  if (values.resources) {
    try {
      resources = JSON.parse(values.resources);
    } catch {
      fail(`--resources is not JSON: ${values.resources}`);
    }
    if (typeof resources !== "object" || resources === null || Array.isArray(resources)) {
      fail("--resources must be a JSON object of numbers");
    }
  }
  if (values.gpus !== undefined) {
    const n = values.gpus === "auto" ? await countGpus() : Number(values.gpus);
    if (!Number.isInteger(n) || n < 0) fail(`--gpus must be a count or "auto", got ${values.gpus}`);
    resources = { ...resources, gpu: n };
  }
  // Flags first, then what an owner handed over, then the usual NATS_* variables.
  const owner = credentialsFromEnv();
  const std = natsEnvCredentials();
  const tls = values["tls-ca"] || values["tls-cert"] || values["tls-key"]
    ? { caFile: values["tls-ca"], certFile: values["tls-cert"], keyFile: values["tls-key"] }
    : owner.tls ?? std.tls;
  const split = splitUrlCredentials(values.nats.split(","), {
    user: values.user ?? owner.user ?? std.user,
    pass: values.pass ?? owner.pass ?? std.pass,
    token: values.token ?? owner.token ?? std.token,
    credsFile: values.creds ?? owner.credsFile ?? std.credsFile,
    nkeySeed: owner.nkeySeed ?? std.nkeySeed,
    tls,
    inboxPrefix: owner.inboxPrefix,
  });
  const credentials: Credentials = split.credentials;
  const heartbeatMs = Number(values["heartbeat-ms"]);
  const missed = Number(values["missed-heartbeats"]);
  if (!(heartbeatMs > 0) || !Number.isInteger(missed) || missed < 1) fail("bad heartbeat settings");
  const nodeId = values.id ?? `n${crypto.randomUUID().slice(0, 8)}`;
  const system = await System.join({
    servers: split.servers,
    credentials,
    system: values.system,
    nodeId,
    resources,
    placeable: true,
    allowModules: values["allow-module"],
    heartbeatMs,
    missedHeartbeats: missed,
    maxFrameBytes: 1024 * 1024 * 1024,
  });
  if (!values["owner-pipe"]) {
    console.error(
      `node ${nodeId} joined system ${values.system} at ${values.nats} with ${
        JSON.stringify(resources)
      }`,
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
  if (values["owner-pipe"]) {
    // The owner keeps our stdin open; end of file means it is gone (even if it was SIGKILLed).
    const buf = new Uint8Array(256);
    while ((await Deno.stdin.read(buf)) !== null) { /* nothing is sent on it */ }
    await stop();
  }
}

if (import.meta.main) {
  main().catch((e) => {
    console.error(`node: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  });
}

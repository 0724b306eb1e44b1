/**
 * Credentials for a system on a cluster (`deno task cluster-creds`): two nats-servers on loopback
 * joined by a route, both including the generated authorization block. A node that reads its
 * own key file joins from the second server and hosts an actor the driver, on the first server,
 * spawns and calls, and one from a module bundle the driver ships through the object store (so
 * both users' JetStream rights are used); a node without a key, with a key the servers do not know, or with the key a
 * run for another system made, is refused with a message that says so.
 */
import assert from "node:assert/strict";
import { findNatsServer } from "../runtime/nats_server.ts";
import { bundleModule, init, type ShippedModule } from "../runtime/mod.ts";
import type { AnyActorDef } from "../runtime/actor.ts";
import { Greeter } from "../examples/greeter_actor.ts";
import { nkeys } from "@nats-io/nats-core";
import { denoArgv, NODE_MAIN } from "./support/faults.ts";

const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname).replace(/\/$/, "");
const SYSTEM = "credsys";

const WHERE = `import { defineActor, z } from "@hd-pissa/hd-pissa";
export const Where = defineActor({
  name: "Where",
  module: import.meta.url,
  init: z.object({}),
  create: () => ({}),
  methods: { pid: { input: z.undefined(), output: z.number(), handler: () => Deno.pid } },
});
`;

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Runs the command as an operator would; returns its exit code and output. */
async function run(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Environment of a node process: only what Deno needs, plus `extra` (no inherited NATS_*). */
function nodeEnv(extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const k of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"]) {
    const v = Deno.env.get(k);
    if (v !== undefined) env[k] = v;
  }
  return { ...env, ...extra };
}

function startNode(
  url: string,
  id: string,
  env: Record<string, string>,
  extra: string[] = [],
): Deno.ChildProcess {
  const argv = denoArgv([], NODE_MAIN, [
    "--nats",
    url,
    "--system",
    SYSTEM,
    "--id",
    id,
    "--owner-pipe",
    ...extra,
  ]);
  return new Deno.Command(argv[0], {
    args: argv.slice(1),
    clearEnv: true,
    env: nodeEnv(env),
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** A node that must be refused: it exits on its own, non-zero, and says why. */
async function refused(url: string, id: string, env: Record<string, string>): Promise<string> {
  const child = startNode(url, id, env);
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const out = await child.output();
  clearTimeout(timer);
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 1, `the node exits with 1, not ${out.code}:\n${stderr}`);
  return stderr;
}

Deno.test("the generated key files are private and the servers' block holds public keys only", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "cluster-creds-" });
  try {
    const out = `${tmp}/creds`;
    const r = await run(
      [
        "run",
        "-A",
        "examples/cluster_creds.ts",
        "--system",
        SYSTEM,
        "--nodes",
        "n1,n2",
        "--out",
        out,
      ],
    );
    assert.equal(r.code, 0, r.stderr);
    const names = [...Deno.readDirSync(out)].map((e) => e.name).sort();
    assert.deepEqual(names, ["authorization.conf", "driver.nk", "n1.nk", "n2.nk"]);
    assert.equal(Deno.statSync(out).mode! & 0o777, 0o700);
    const conf = Deno.readTextFileSync(`${out}/authorization.conf`);
    for (const n of names) {
      assert.equal(Deno.statSync(`${out}/${n}`).mode! & 0o777, 0o600, n);
      if (!n.endsWith(".nk")) continue;
      const seed = Deno.readTextFileSync(`${out}/${n}`).trim();
      assert.match(seed, /^SU[A-Z2-7]+$/);
      const key = nkeys.fromSeed(new TextEncoder().encode(seed)).getPublicKey();
      assert.ok(conf.includes(`nkey: "${key}"`), `${n}'s public key is listed`);
      assert.ok(!conf.includes(seed), `${n}'s seed is not in the servers' file`);
    }
    assert.match(conf, /"actors\.credsys\.rt\.hb\.n1"/);
    assert.match(conf, /"_INBOX\.n2\.>"/);
    // A second run never overwrites keys that may be in use.
    const again = await run(
      ["run", "-A", "examples/cluster_creds.ts", "--system", SYSTEM, "--nodes", "n1", "--out", out],
    );
    assert.equal(again.code, 2);
    assert.match(again.stderr, /not empty/);
    const bad = await run(
      [
        "run",
        "-A",
        "examples/cluster_creds.ts",
        "--system",
        "a.b",
        "--nodes",
        "n1",
        "--out",
        `${tmp}/x`,
      ],
    );
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /system name "a\.b" is invalid/);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("on a two-server cluster a node with its key works; others' keys and no key are refused", async () => {
  const bin = findNatsServer();
  assert.ok(bin, "nats-server is installed");
  const tmp = await Deno.makeTempDir({ prefix: "cluster-creds-" });
  const servers: Deno.ChildProcess[] = [];
  const nodes: Deno.ChildProcess[] = [];
  let system: Awaited<ReturnType<typeof init>> | undefined;
  try {
    for (const [sys, dir] of [[SYSTEM, "creds"], ["othersys", "other"]]) {
      const r = await run([
        "run",
        "-A",
        "examples/cluster_creds.ts",
        "--system",
        sys,
        "--nodes",
        "n1",
        "--out",
        `${tmp}/${dir}`,
      ]);
      assert.equal(r.code, 0, r.stderr);
    }
    const [c1, c2, p1, p2] = [freePort(), freePort(), freePort(), freePort()];
    const conf = (name: string, port: number, cport: number, peer: number) =>
      [
        `server_name: ${name}`,
        `listen: "127.0.0.1:${port}"`,
        `cluster { name: credtest, listen: "127.0.0.1:${cport}", routes: ["nats://127.0.0.1:${peer}"] }`,
        `jetstream { store_dir: ${JSON.stringify(`${tmp}/js-${name}`)} }`,
        `include ./creds/authorization.conf`,
      ].join("\n") + "\n";
    Deno.writeTextFileSync(`${tmp}/s1.conf`, conf("s1", p1, c1, c2));
    Deno.writeTextFileSync(`${tmp}/s2.conf`, conf("s2", p2, c2, c1));
    for (const s of ["s1", "s2"]) {
      servers.push(
        new Deno.Command(bin, {
          args: ["-c", `${tmp}/${s}.conf`, "-l", `${tmp}/${s}.log`],
          stdout: "null",
          stderr: "null",
        }).spawn(),
      );
    }
    const url1 = `nats://127.0.0.1:${p1}`;
    const url2 = `nats://127.0.0.1:${p2}`;

    // The driver joins on the first server with its key.
    const driverSeed = Deno.readTextFileSync(`${tmp}/creds/driver.nk`).trim();
    for (let i = 0; i < 100 && !system; i++) {
      system = await init({ nats: url1, system: SYSTEM, nkeySeed: driverSeed }).catch((e) => {
        if (i === 99) throw e;
        return undefined;
      });
      if (!system) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(system);

    // An actor module only the driver's host has, which node n1 is told it may take.
    const app = `${tmp}/app`;
    Deno.mkdirSync(app);
    Deno.writeTextFileSync(`${app}/where.ts`, WHERE);
    const whereUrl = new URL(`file://${app}/where.ts`);
    const { digest } = await bundleModule(whereUrl, { config: `${ROOT}/deno.json` });

    // The node joins on the second server with its own key file, and does a node's work.
    const node = startNode(url2, "n1", { NATS_NKEY_FILE: `${tmp}/creds/n1.nk` }, [
      "--allow-bundle",
      digest,
    ]);
    nodes.push(node);
    for (let i = 0; i < 600 && !system.nodes().some((n) => n.id === "n1"); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(system.nodes().some((n) => n.id === "n1"), "node n1 joined across the route");
    const g = await system.spawn(Greeter, { greeting: "Hi" }, { node: "n1" });
    const r = await g.greet({ name: "cluster" });
    assert.equal(r.text, "Hi, cluster!");
    assert.notEqual(r.pid, Deno.pid);
    // The object store works for both users too: the driver ships a module, the node fetches it.
    const { Where } = await import(whereUrl.href) as { Where: AnyActorDef };
    // A new JetStream cluster answers once it has elected its meta leader.
    let shipped: ShippedModule | undefined;
    for (let i = 0; !shipped; i++) {
      try {
        shipped = await system.shipModule(whereUrl);
      } catch (e) {
        if (i === 50) throw e;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    assert.equal(shipped.digest, digest);
    const w = await system.spawn(shipped.actor(Where), {}, { node: "n1" });
    assert.notEqual(await w.pid(), Deno.pid);

    // No key, a key the servers do not list, the key made for another system: refused.
    const none = await refused(url2, "n2", {});
    assert.match(none, /refused this node's credentials/);
    const stray = `${tmp}/stray.nk`;
    Deno.writeTextFileSync(stray, new TextDecoder().decode(nkeys.createUser().getSeed()) + "\n", {
      mode: 0o600,
    });
    const wrong = await refused(url2, "n1", { NATS_NKEY_FILE: stray });
    assert.match(wrong, /refused this node's credentials/);
    const other = await refused(url1, "n1", { NATS_NKEY_FILE: `${tmp}/other/n1.nk` });
    assert.match(other, /refused this node's credentials/);
    assert.ok(system.nodes().some((n) => n.id === "n1"), "the node with its key is still there");
  } finally {
    await system?.shutdown();
    for (const n of nodes) {
      await n.stdin.close().catch(() => {});
      await n.output().catch(() => {});
    }
    for (const s of servers) {
      s.kill("SIGTERM");
      await s.status;
    }
    await Deno.remove(tmp, { recursive: true });
  }
});

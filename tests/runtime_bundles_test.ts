/**
 * Module bundles: an actor module that exists only on the spawning program's host (a temp folder
 * outside the project and outside every node's allow-list) runs on a node process that was started
 * from another working folder, because the program shipped it through the object store and the
 * node allow-lists its digest. A node without the digest refuses it, a bundle whose stored bytes
 * were changed is refused, and a second spawn uses the node's cache.
 */
import assert from "node:assert/strict";
import {
  BundleDigestError,
  BundleError,
  BundleNotAllowedError,
  init,
  ModuleNotAllowedError,
  type System,
} from "../runtime/mod.ts";
import {
  BUNDLE_FORMAT,
  BundleCache,
  bundledActor,
  bundleModule,
  bundleObjectName,
  decodeBundle,
  digestOf,
} from "../runtime/bundles.ts";
import { CREDENTIALS_ENV } from "../runtime/connect.ts";
import { fromWireError } from "../runtime/errors.ts";
import type { AnyActorDef } from "../runtime/actor.ts";
import { denoArgv, NODE_MAIN } from "./support/faults.ts";

const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname).replace(/\/$/, "");

/** The application's files, in a folder of its own outside the project. */
const APP: Record<string, string> = {
  "echo.ts": `import { defineActor, z } from "@hd-pissa/hd-pissa";
import { shout } from "./lib/shout.ts";

export const Echo = defineActor({
  name: "Echo",
  module: import.meta.url,
  init: z.object({ tag: z.string() }),
  create: (input) => ({ tag: input.tag }),
  methods: {
    echo: {
      input: z.string(),
      output: z.object({ text: z.string(), from: z.string(), pid: z.number() }),
      handler: (s, x) => ({ text: shout(s.tag + ":" + x), from: import.meta.url, pid: Deno.pid }),
    },
  },
});
`,
  "lib/shout.ts": `export const shout = (s: string): string => s.toUpperCase() + "!";
`,
  "other.ts": `import { defineActor, z } from "@hd-pissa/hd-pissa";

export const Other = defineActor({
  name: "Other",
  module: import.meta.url,
  init: z.object({}),
  create: () => ({}),
  methods: { who: { input: z.undefined(), output: z.string(), handler: () => "other" } },
});
`,
};

async function writeApp(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "bundles-app-" });
  assert.ok(!dir.startsWith(ROOT + "/"), "the app lives outside the project");
  for (const [path, text] of Object.entries(APP)) {
    await Deno.mkdir(`${dir}/${path}`.replace(/\/[^/]*$/, ""), { recursive: true });
    await Deno.writeTextFile(`${dir}/${path}`, text);
  }
  return dir;
}

/** A node process run as an operator would, from a working folder of its own. */
class NodeProcess {
  readonly #child: Deno.ChildProcess;
  constructor(
    readonly id: string,
    readonly cache: string,
    system: System,
    credentials: unknown,
    cwd: string,
    allow: string[],
  ) {
    const argv = denoArgv([], NODE_MAIN, [
      "--nats",
      system.servers.join(","),
      "--system",
      system.name,
      "--id",
      id,
      "--owner-pipe",
      "--bundle-cache",
      cache,
      ...allow.flatMap((d) => ["--allow-bundle", d]),
    ]);
    this.#child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      cwd,
      env: { [CREDENTIALS_ENV]: JSON.stringify(credentials) },
      stdin: "piped",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
  }

  async stop() {
    await this.#child.stdin.close().catch(() => {});
    await this.#child.status;
  }
}

async function startNode(
  system: System,
  cwd: string,
  cache: string,
  allow: string[],
): Promise<NodeProcess> {
  const ident = system.server?.takeNodeIdentity();
  assert.ok(ident, "the embedded server has a node identity to give");
  const n = new NodeProcess(ident.id, cache, system, ident.credentials, cwd, allow);
  for (let i = 0; i < 600 && !system.nodes().some((x) => x.id === n.id); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(system.nodes().some((x) => x.id === n.id), `node ${n.id} joined`);
  return n;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

function hexOf(digest: string): string {
  return digest.slice("sha256:".length);
}

Deno.test("a bundle holds the entry and its relative imports only, and always hashes the same", async () => {
  const app = await writeApp();
  try {
    const url = new URL(`file://${app}/echo.ts`);
    const a = await bundleModule(url, { config: `${ROOT}/deno.json` });
    assert.deepEqual(a.files, ["echo.ts", "lib/shout.ts"], "the runtime and zod stay outside");
    assert.equal(a.digest, await digestOf(a.bytes));
    const doc = decodeBundle(a.bytes);
    assert.equal(doc.format, BUNDLE_FORMAT);
    assert.equal(doc.files["lib/shout.ts"], APP["lib/shout.ts"]);
    const b = await bundleModule(url, { config: `${ROOT}/deno.json` });
    assert.equal(b.digest, a.digest);
    await Deno.writeTextFile(`${app}/lib/shout.ts`, APP["lib/shout.ts"].replace("!", "?"));
    const c = await bundleModule(url, { config: `${ROOT}/deno.json` });
    assert.notEqual(c.digest, a.digest, "a change in an imported file changes the digest");
  } finally {
    await Deno.remove(app, { recursive: true });
  }
});

Deno.test("a bundle with a path that leaves its folder, or bytes that miss their digest, is refused", async () => {
  const enc = (files: Record<string, string>, entry = "a.ts") =>
    new TextEncoder().encode(JSON.stringify({ format: BUNDLE_FORMAT, entry, files }));
  for (const bad of ["../evil.ts", "/etc/evil.ts", "a/../../evil.ts", "a//b.ts", "./a.ts"]) {
    assert.throws(
      () => decodeBundle(enc({ "a.ts": "", [bad]: "" })),
      (e) => e instanceof BundleError && /not a plain relative path/.test(e.message),
      bad,
    );
  }
  assert.throws(() => decodeBundle(enc({ "a.ts": "" }, "b.ts")), BundleError);
  const root = await Deno.makeTempDir({ prefix: "bundles-cache-" });
  try {
    const good = enc({ "a.ts": "export const x = 1;\n" });
    const digest = await digestOf(good);
    const cache = new BundleCache(root);
    const wrong = enc({ "a.ts": "export const x = 2;\n" });
    await assert.rejects(
      cache.entry(digest, () => Promise.resolve(wrong)),
      (e) => e instanceof BundleDigestError && e.expected === digest && e.actual !== digest,
    );
    assert.deepEqual([...Deno.readDirSync(root)], [], "nothing was written");
    const entry = await cache.entry(digest, () => Promise.resolve(good));
    assert.equal(entry.href, `file://${root}/${hexOf(digest)}/src/a.ts`);
    assert.equal((await import(entry.href)).x, 1);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("an actor module shipped as a bundle runs on a node that allows its digest, and only there", async () => {
  const app = await writeApp();
  const work = await Deno.makeTempDir({ prefix: "bundles-node-" });
  const cacheA = `${work}/cache-a`;
  const cacheB = `${work}/cache-b`;
  const { Echo } = await import(`file://${app}/echo.ts`) as { Echo: AnyActorDef };
  const { Other } = await import(`file://${app}/other.ts`) as { Other: AnyActorDef };
  const echoUrl = new URL(`file://${app}/echo.ts`);
  const otherUrl = new URL(`file://${app}/other.ts`);
  const otherDigest = (await bundleModule(otherUrl, { config: `${ROOT}/deno.json` })).digest;
  const system = await init({ system: "bundles", nodeConfig: `${ROOT}/deno.json` });
  const nodes: NodeProcess[] = [];
  try {
    const shipped = await system.shipModule(echoUrl);
    assert.deepEqual(shipped.files, ["echo.ts", "lib/shout.ts"]);
    const store = await system.objects();
    assert.ok(await store.info(bundleObjectName(shipped.digest)), "stored under its digest");

    const a = await startNode(system, work, cacheA, [shipped.digest, otherDigest]);
    const b = await startNode(system, work, cacheB, []);
    nodes.push(a, b);

    // Node A runs it from the bundle, from its own cache folder.
    const echo = await system.spawn(shipped.actor(Echo), { tag: "a" }, { node: a.id });
    const r = await echo.echo("hi");
    assert.equal(r.text, "A:HI!", "the relative import came along");
    assert.notEqual(r.pid, Deno.pid);
    assert.equal(r.from, `file://${cacheA}/${hexOf(shipped.digest)}/src/echo.ts`);

    // The plain way (by module URL) stays closed: the app's folder is in no allow-list.
    await assert.rejects(
      system.spawn(Echo, { tag: "x" }, { node: a.id }),
      (e) => e instanceof ModuleNotAllowedError && e.module === echoUrl.href,
    );

    // Node B was not told the digest: a typed refusal, and nothing fetched or unpacked there.
    await assert.rejects(
      system.spawn(shipped.actor(Echo), { tag: "b" }, { node: b.id }),
      (e) =>
        e instanceof BundleNotAllowedError && e.digest === shipped.digest && e.node === b.id &&
        e.message.includes("--allow-bundle"),
    );
    assert.equal(await exists(`${cacheB}/${hexOf(shipped.digest)}`), false);

    // Bytes changed under the bundle's name are refused, and nothing of them is unpacked.
    const other = await system.shipModule(otherUrl);
    assert.equal(other.digest, otherDigest);
    const name = bundleObjectName(other.digest);
    const genuine = new TextDecoder().decode(await store.get(name));
    // In the bundle's JSON the module's quotes are escaped: `=> \"other\"`.
    const tampered = new TextEncoder().encode(genuine.replace('=> \\"other\\"', '=> \\"owned\\"'));
    assert.notEqual(new TextDecoder().decode(tampered), genuine, "the bytes were changed");
    assert.equal(decodeBundle(tampered).files["other.ts"].includes('"owned"'), true);
    await store.put(name, tampered);
    const tamperedDigest = await digestOf(tampered);
    await assert.rejects(
      system.spawn(other.actor(Other), {}, { node: a.id }),
      (e) =>
        e instanceof BundleDigestError && e.expected === other.digest &&
        e.actual === tamperedDigest,
    );
    assert.equal(await exists(`${cacheA}/${hexOf(other.digest)}`), false);
    // Shipped again, the genuine bytes load: the node kept nothing of the refused ones.
    await system.shipModule(otherUrl);
    const o = await system.spawn(other.actor(Other), {}, { node: a.id });
    assert.equal(await o.who(), "other");

    // The second spawn takes the bundle from the cache: the store no longer has it.
    const mtime = (await Deno.stat(`${cacheA}/${hexOf(shipped.digest)}/bundle.json`)).mtime;
    assert.ok(await store.delete(bundleObjectName(shipped.digest)));
    const echo2 = await system.spawn(shipped.actor(Echo), { tag: "c" }, { node: a.id });
    assert.equal((await echo2.echo("again")).text, "C:AGAIN!");
    assert.deepEqual(
      (await Deno.stat(`${cacheA}/${hexOf(shipped.digest)}/bundle.json`)).mtime,
      mtime,
    );

    // A node started again on the same cache folder uses what it finds only if it still matches.
    await system.stop(echo);
    await system.stop(echo2);
    await system.stop(o);
    await a.stop();
    nodes.splice(nodes.indexOf(a), 1);
    const a2 = await startNode(system, work, cacheA, [shipped.digest]);
    nodes.push(a2);
    const echo3 = await system.spawn(shipped.actor(Echo), { tag: "d" }, { node: a2.id });
    assert.equal((await echo3.echo("kept")).text, "D:KEPT!");
    await system.stop(echo3);
    await a2.stop();
    nodes.splice(nodes.indexOf(a2), 1);
    await Deno.writeTextFile(
      `${cacheA}/${hexOf(shipped.digest)}/src/lib/shout.ts`,
      "export const shout = (s: string): string => s + ' (changed on disk)';\n",
    );
    const a3 = await startNode(system, work, cacheA, [shipped.digest]);
    nodes.push(a3);
    await assert.rejects(
      system.spawn(shipped.actor(Echo), { tag: "e" }, { node: a3.id }),
      (e) => e instanceof BundleError && /cannot fetch module bundle/.test(e.message),
      "the changed folder is not used, and the store no longer has the bundle",
    );
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await system.shutdown();
    await Deno.remove(app, { recursive: true });
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("a definition from another module than the bundle's entry is refused before spawning", async () => {
  const app = await writeApp();
  try {
    const { Other } = await import(`file://${app}/other.ts`) as { Other: AnyActorDef };
    const echo = await bundleModule(new URL(`file://${app}/echo.ts`), {
      config: `${ROOT}/deno.json`,
    });
    assert.throws(() => bundledActor(Other, echo), /not in the bundle's entry/);
  } finally {
    await Deno.remove(app, { recursive: true });
  }
});

Deno.test("the nodes init() starts take the bundles its allowBundles lists", async () => {
  const app = await writeApp();
  const echoUrl = new URL(`file://${app}/echo.ts`);
  const { Echo } = await import(echoUrl.href) as { Echo: AnyActorDef };
  const config = `${ROOT}/deno.json`;
  const { digest } = await bundleModule(echoUrl, { config });
  const system = await init({ nodes: 1, allowBundles: [digest], nodeConfig: config });
  try {
    const shipped = await system.shipModule(echoUrl);
    assert.equal(shipped.digest, digest);
    const [node] = system.localNodes;
    const echo = await system.spawn(shipped.actor(Echo), { tag: "n" }, { node: node.id });
    const r = await echo.echo("x");
    assert.equal(r.text, "N:X!");
    assert.equal(r.pid, node.pid);
    assert.match(r.from, new RegExp(`/${hexOf(digest)}/src/echo\\.ts$`));
  } finally {
    await system.shutdown();
    await Deno.remove(app, { recursive: true });
  }
  await assert.rejects(
    init({ allowBundles: ["sha256:abc"] }),
    /allowed bundle digest "sha256:abc" is invalid/,
  );
});

Deno.test("bundle errors cross the wire as themselves, fields included", () => {
  const d = `sha256:${"ab".repeat(32)}`;
  const samples = [
    new BundleNotAllowedError(d, "n1"),
    new BundleDigestError(d, `sha256:${"cd".repeat(32)}`),
    new BundleError('bundle path "../x" is not a plain relative path'),
  ];
  for (const e of samples) {
    const back = fromWireError(JSON.parse(JSON.stringify(e.toWire())), "a", "spawn");
    assert.equal(back.constructor, e.constructor);
    assert.equal(back.message, e.message);
    assert.equal(back.code, e.code);
    assert.deepEqual({ ...back }, { ...e });
  }
});

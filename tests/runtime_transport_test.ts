// Joining an existing server by URL, over TCP (nats://) and WebSocket (ws://), with credentials;
// two systems on one server stay isolated.
import assert from "node:assert/strict";
import { EmbeddedServer, init } from "../internal_mod.ts";
import { Counter, TensorEcho } from "./runtime_actors_test.ts";
import { selfSignedCert } from "./support/tls.ts";

Deno.test("two systems share one server, one over TCP and one over WebSocket, isolated", async () => {
  // A real nats-server that requires a user and password, started outside either system.
  const server = await EmbeddedServer.start();
  const { user, pass } = server.credentials;
  assert.match(server.url, /^nats:\/\//);
  assert.match(server.wsUrl ?? "", /^ws:\/\//);
  // Wrong credentials are refused: the process gets a clear error.
  const intruder = await new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      "--quiet",
      `--config=${new URL("../deno.json", import.meta.url).pathname}`,
      `import { init } from "${new URL("../mod.ts", import.meta.url).href}";
       await init({ nats: "${server.url}", user: "intruder", pass: "guess" });`,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.notEqual(intruder.code, 0);
  assert.match(new TextDecoder().decode(intruder.stderr), /Authorization Violation/);
  const alpha = await init({ nats: server.url, system: "alpha", user, pass, nodes: 1 });
  try {
    const beta = await init({ nats: server.wsUrl, system: "beta", user, pass, nodes: 1 });
    try {
      // The same name in both systems: each sees its own.
      const a = await alpha.spawn(Counter, { start: 100 }, { name: "same" });
      const b = await beta.spawn(Counter, { start: 200 }, { name: "same" });
      assert.equal(await a.add(1), 101);
      assert.equal(await b.add(2), 202);
      assert.equal(await (await alpha.getActor(Counter, "same")).get(), 101);
      assert.equal(await (await beta.getActor(Counter, "same")).get(), 202);
      // Nodes and placement never cross systems.
      const alphaNodes = new Set(alpha.nodes().map((n) => n.id));
      const betaNodes = new Set(beta.nodes().map((n) => n.id));
      assert.equal([...alphaNodes].filter((n) => betaNodes.has(n)).length, 0);
      assert.ok(alphaNodes.has(alpha.localNodes[0].id) && !betaNodes.has(alpha.localNodes[0].id));
      assert.equal((await a.whoami()).node, alpha.localNodes[0].id);
      assert.equal((await b.whoami()).node, beta.localNodes[0].id);
      assert.ok(alpha.actors().every((x) => !beta.actors().some((y) => y.node === x.node)));
      // A broadcast on one system's namespace is not seen by the other.
      const seen = await beta.collectives.subscribe(`${beta.namespace}.>`);
      await alpha.collectives.broadcast(`${alpha.namespace}.news`, { hello: 1 });
      await beta.collectives.broadcast(`${beta.namespace}.news`, { hello: 2 });
      const first = await seen.next(5000);
      assert.deepEqual(first.value, { hello: 2 });
      seen.close();
      // Tensors over the WebSocket path, chunked (above the 8 MiB max_payload).
      const e = await beta.spawn(TensorEcho, {});
      const data = new Float32Array(3 * 1024 * 1024).map((_, i) => Math.sin(i) * 1e3);
      const out = await e.echo({ name: "ws", data }, { timeoutMs: 60_000 });
      assert.ok(out.data.every((v, i) => Object.is(v, data[i])));
    } finally {
      await beta.shutdown();
    }
  } finally {
    await alpha.shutdown();
    await server.stop();
  }
});

Deno.test("a node started by hand (deno task node) joins by URL with credentials from the environment", async () => {
  const server = await EmbeddedServer.start();
  const { user, pass } = server.credentials;
  const system = await init({ nats: server.url, system: "manual", user, pass });
  const node = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      `--config=${new URL("../deno.json", import.meta.url).pathname}`,
      new URL("../runtime/node_main.ts", import.meta.url).pathname,
      "--nats",
      server.url,
      "--system",
      "manual",
      "--gpus",
      "2",
      "--id",
      "gpuhost",
    ],
    env: { NATS_USER: user, NATS_PASSWORD: pass },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  try {
    const c = await system.spawn(Counter, { start: 0 }, {
      resources: { gpu: 2 },
      placementTimeoutMs: 20_000,
    });
    assert.equal((await c.whoami()).node, "gpuhost");
    assert.deepEqual(system.nodes().find((n) => n.id === "gpuhost")?.resources, { gpu: 2 });
    await system.stop(c);
  } finally {
    node.kill("SIGTERM");
    const status = await node.status;
    const err = new TextDecoder().decode(await new Response(node.stderr).arrayBuffer());
    assert.equal(status.code, 0, err);
    assert.match(err, /node gpuhost joined system manual/);
    await system.shutdown();
    await server.stop();
  }
});

Deno.test({
  name: "TLS and token options pass through to this process and its nodes",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "actors-tls-" });
    await selfSignedCert(dir);
    const token = crypto.randomUUID();
    await Deno.writeTextFile(
      `${dir}/server.conf`,
      [
        `listen: "127.0.0.1:-1"`,
        `ports_file_dir: "${dir}"`,
        `tls { cert_file: "${dir}/cert.pem", key_file: "${dir}/key.pem" }`,
        `authorization { token: "${token}" }`,
      ].join("\n"),
    );
    const server = new Deno.Command("nats-server", {
      args: ["-c", `${dir}/server.conf`],
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      let url = "";
      for (let i = 0; i < 200 && !url; i++) {
        await new Promise((r) => setTimeout(r, 25));
        for (const e of Deno.readDirSync(dir)) {
          if (e.name.endsWith(".ports")) {
            url = JSON.parse(Deno.readTextFileSync(`${dir}/${e.name}`)).nats[0];
          }
        }
      }
      assert.ok(url, "nats-server with TLS is up");
      const system = await init({ nats: url, token, tls: { caFile: `${dir}/cert.pem` }, nodes: 1 });
      try {
        const c = await system.spawn(Counter, { start: 7 });
        assert.equal(await c.add(1), 8);
        assert.notEqual((await c.whoami()).pid, Deno.pid, "the node connected over TLS too");
      } finally {
        await system.shutdown();
      }
    } finally {
      server.kill("SIGTERM");
      await server.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
});

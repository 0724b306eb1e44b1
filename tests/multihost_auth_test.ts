/**
 * Credentials and TLS across hosts. The cluster's servers take clients over TLS only and talk to
 * each other over TLS routes that log in; two accounts share the cluster: this system's (`HD`)
 * and another system's (`OTHER`), each with its own user. On one GPU host a node has no valid
 * credentials: the server refuses it (Authorization Violation) and it exits. On another a process
 * has the other system's credentials: it gets into the cluster but sees none of this system's
 * traffic. The run on the two legitimate GPU hosts ends on the one-host run's bits.
 */
import assert from "node:assert/strict";
import { connectNats } from "../runtime/connect.ts";
import { denoArgv, NODE_MAIN, runCli, TAG_ENV, tinyArgs, within } from "./support/faults.ts";
import { assertSameBits, driverRun, withScenario } from "./support/multihost.ts";
import type { Lab } from "./support/netns.ts";
import { selfSignedCert } from "./support/tls.ts";

const STEPS = 4;

Deno.test("several hosts over TLS: no credentials refused, another system's credentials see nothing; same bits", async () => {
  const otherPass = crypto.randomUUID();
  const labOptions = (dir: string) => {
    const tls = `cert_file: "${dir}/cert.pem", key_file: "${dir}/key.pem"`;
    return {
      nodes: 2,
      prepare: (lab: Lab) => selfSignedCert(dir, lab.hosts.map((h) => h.ip)),
      auth: (user: string, pass: string) => [
        `tls { ${tls} }`,
        `accounts {`,
        `  HD: { jetstream: enabled, users: [ { user: "${user}", password: "${pass}" } ] }`,
        `  OTHER: { jetstream: enabled, users: [ { user: "other", password: "${otherPass}" } ] }`,
        `}`,
      ],
      clusterLines: [`tls { ${tls}, ca_file: "${dir}/cert.pem" }`],
      env: { NATS_TLS_CA: `${dir}/cert.pem` },
    };
  };
  // gpu3 is the intruders' host: it runs a server of the cluster but no legitimate node.
  await withScenario(
    "hd-multihost-auth-",
    { steps: STEPS, gpuHosts: 3, lab: labOptions },
    async (s) => {
      const { t, dir, tag, out } = s;
      const intruders = t.gpus[2];
      const caOnly = { NATS_TLS_CA: `${dir}/cert.pem` };

      // No valid credentials: the node is refused and exits.
      const bare = await runCli(
        tinyArgs(dir, `${dir}/bare`, STEPS, ["--nats", t.urls(intruders)]),
        tag,
        { ...caOnly, NATS_USER: t.user, NATS_PASSWORD: "guess" },
        intruders.wrap,
      );
      assert.equal(bare.code, 1);
      assert.match(bare.stderr, /^finetune: .*Authorization Violation/m);
      const argv = denoArgv(intruders.wrap, NODE_MAIN, [
        "--nats",
        t.urls(intruders),
        "--gpus",
        "1",
      ]);
      const node = await new Deno.Command(argv[0], {
        args: argv.slice(1),
        env: { ...caOnly, [TAG_ENV]: tag },
        stdin: "null",
        stdout: "null",
        stderr: "piped",
      }).output();
      assert.equal(node.code, 1);
      assert.match(new TextDecoder().decode(node.stderr), /^node: .*Authorization Violation/m);

      // Another system's credentials: in the cluster, but this system's subjects stay silent.
      const tlsOpt = { caFile: `${dir}/cert.pem` };
      const urls = t.servers.map((x) => x.url);
      const other = await connectNats(urls, { user: "other", pass: otherPass, tls: tlsOpt });
      const ours = await connectNats(urls, { user: t.user, pass: t.pass, tls: tlsOpt });
      let otherSaw = 0;
      let oursSaw = 0;
      other.subscribe("actors.>", {
        callback: () => {
          otherSaw++;
        },
      });
      other.subscribe("$O.>", {
        callback: () => {
          otherSaw++;
        },
      });
      ours.subscribe("actors.>", {
        callback: () => {
          oursSaw++;
        },
      });
      await other.flush();
      await ours.flush();

      const r = await within(driverRun(t, dir, out, STEPS), 120_000, "the run across hosts");
      await other.flush();
      await ours.flush();
      assert.equal(r.code, 0, `the finetune CLI failed:\n${r.stderr}`);
      assert.ok(oursSaw > 0, "this system's own user saw its traffic");
      assert.equal(otherSaw, 0, "the other system's user saw none of it");
      // Its account has no such bucket: the weights and checkpoints are out of its reach.
      const names = (await other.request("$JS.API.STREAM.NAMES", "{}")).json<{ total: number }>();
      assert.equal(names.total, 0, "the other account has no streams at all");
      await other.close();
      await ours.close();

      // Each server's route port speaks TLS, so the routes that formed the cluster run TLS; every
      // client connection runs TLS too.
      for (const server of t.servers) {
        const host = new URL(server.url).hostname;
        assert.ok(await routeSpeaksTls(host, `${dir}/cert.pem`), `${host}:6222 without TLS`);
        const connz = await (await fetch(`${server.http}/connz`)).json();
        for (const c of connz.connections ?? []) {
          assert.ok(c.tls_version, `client ${c.ip} on ${host} without TLS`);
        }
      }

      const report = JSON.parse(await Deno.readTextFile(`${out}/report.json`));
      assert.deepEqual(report.weights_loaded_via, ["store", "store"]);
      await assertSameBits(s);
    },
  );
});

/**
 * Whether `host`'s route port speaks TLS: `openssl s_client` completes a handshake with it and
 * verifies its certificate against our CA (a plain route port would answer with a clear-text
 * INFO instead). Deno's own TLS client refuses a self-signed CA as a server certificate.
 */
async function routeSpeaksTls(host: string, caFile: string): Promise<boolean> {
  const out = await new Deno.Command("openssl", {
    args: ["s_client", "-connect", `${host}:6222`, "-CAfile", caFile, "-verify_return_error"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  return /Verify return code: 0 \(ok\)/.test(text) &&
    /Protocol *: *TLSv1\.[23]|TLSv1\.[23]/.test(text);
}

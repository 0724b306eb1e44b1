/**
 * The job on an existing NATS server that requires credentials: a token; a user and password
 * over TLS; an nkey. Each time the worker nodes are started by hand (as on other hosts) and the
 * finetune CLI joins with `--nats URL`, credentials coming from the NATS_* environment variables
 * (never a flag, which `ps` would show). Each run ends on the bits of the same run on a private
 * embedded system; wrong or missing credentials are refused with a clear error.
 */
import assert from "node:assert/strict";
import { nkeys } from "@nats-io/nats-core";
import { runFinetune } from "../actors/job.ts";
import { tinyOptions, writeTinySetup } from "./support/tiny_run.ts";
import {
  type HandNode,
  leftovers,
  newTag,
  runCli,
  sameFile,
  startHandNode,
  startServer,
  type TestServer,
  tinyArgs,
  waitUntil,
} from "./support/faults.ts";
import { selfSignedCert } from "./support/tls.ts";

const STEPS = 3;
const quiet = { log: () => {}, isTty: false, progress: () => {} };

interface Scenario {
  name: string;
  /** The server's auth (and TLS) config lines. */
  server(dir: string): string[];
  /** Environment of the nodes and the CLI. */
  env(dir: string): Record<string, string>;
  /** Wrong credentials, and the error they must get. */
  wrong: Record<string, string>;
}

const token = crypto.randomUUID();
const pass = crypto.randomUUID();
const user = nkeys.createUser();
const SCENARIOS: Scenario[] = [
  {
    name: "token",
    server: () => [`authorization { token: "${token}" }`],
    env: () => ({ NATS_TOKEN: token }),
    wrong: { NATS_TOKEN: "guess" },
  },
  {
    name: "user and password over TLS",
    server: (dir) => [
      `tls { cert_file: "${dir}/cert.pem", key_file: "${dir}/key.pem" }`,
      `authorization { users: [ { user: "trainer", password: "${pass}" } ] }`,
    ],
    env: (dir) => ({ NATS_USER: "trainer", NATS_PASSWORD: pass, NATS_TLS_CA: `${dir}/cert.pem` }),
    wrong: { NATS_USER: "trainer", NATS_PASSWORD: "guess" },
  },
  {
    name: "nkey",
    server: () => [`authorization { users: [ { nkey: "${user.getPublicKey()}" } ] }`],
    env: () => ({ NATS_NKEY_SEED: new TextDecoder().decode(user.getSeed()) }),
    wrong: { NATS_NKEY_SEED: new TextDecoder().decode(nkeys.createUser().getSeed()) },
  },
];

Deno.test({
  name: "the job joins servers requiring a token, user/password over TLS, or an nkey; same bits",
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "hd-auth-" });
    const tag = newTag();
    try {
      await writeTinySetup(dir);
      await selfSignedCert(dir);
      const clean = tinyOptions(dir, { out: `${dir}/clean`, eval: null, maxSteps: STEPS });
      await runFinetune(clean, quiet);
      for (const sc of SCENARIOS) {
        await t.step(sc.name, async () => {
          let server: TestServer | undefined;
          const nodes: HandNode[] = [];
          try {
            server = await startServer(
              [`jetstream { store_dir: "$DIR/js" }`, ...sc.server(dir)],
              tag,
              sc.name.split(" ")[0],
            );
            const env = sc.env(dir);
            // Without the credentials, neither a node nor the job gets in.
            const bare = await runCli(
              tinyArgs(dir, `${dir}/bare`, STEPS, ["--nats", server.url]),
              tag,
              { ...env, ...sc.wrong },
            );
            assert.equal(bare.code, 1);
            assert.match(bare.stderr, /^finetune: .*Authorization Violation/m);

            for (const id of ["w-a", "w-b"]) {
              nodes.push(startHandNode({ urls: server.url, id, tag, env }));
            }
            const out = `${dir}/${sc.name.split(" ")[0]}`;
            const r = await runCli(tinyArgs(dir, out, STEPS, ["--nats", server.url]), tag, env);
            assert.equal(r.code, 0, r.stderr);
            assert.ok(
              await sameFile(`${clean.out}/model.safetensors`, `${out}/model.safetensors`),
              "the same bits as on a private system",
            );
          } finally {
            await Promise.all(nodes.map((n) => n.stop()));
            await server?.kill();
          }
        });
      }
      await waitUntil("every process is gone", async () => (await leftovers(tag)).length === 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

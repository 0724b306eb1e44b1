/**
 * Where credentials come from when joining a cluster: the URL (taken out of it, so that it is
 * neither logged nor passed on to node command lines), the NATS_* environment variables, or
 * explicit options, which win.
 */
import assert from "node:assert/strict";
import { natsEnvCredentials, splitUrlCredentials } from "../internal_mod.ts";

Deno.test("credentials in URLs are taken out of them; explicit ones win", () => {
  assert.deepEqual(splitUrlCredentials(["nats://ann:s%40cret@10.0.0.1:4222", "nats://10.0.0.2"]), {
    servers: ["nats://10.0.0.1:4222", "nats://10.0.0.2"],
    credentials: { user: "ann", pass: "s@cret" },
  });
  assert.deepEqual(splitUrlCredentials(["tls://t0ken@h:4222"]), {
    servers: ["tls://h:4222"],
    credentials: { token: "t0ken" },
  });
  assert.deepEqual(splitUrlCredentials(["ws://u:p@h:8080"], { token: "given" }), {
    servers: ["ws://h:8080"],
    credentials: { token: "given" },
  });
  assert.deepEqual(splitUrlCredentials(["nats://h:1"]), {
    servers: ["nats://h:1"],
    credentials: {},
  });
});

Deno.test("credentials from the NATS_* environment variables", () => {
  const keys = ["NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_NKEY_FILE", "NATS_TLS_CA"];
  const saved = keys.map((k) => Deno.env.get(k));
  const file = Deno.makeTempFileSync();
  try {
    Deno.writeTextFileSync(file, "SUAEXAMPLESEED\n");
    Deno.env.set("NATS_USER", "u");
    Deno.env.set("NATS_PASSWORD", "p");
    Deno.env.set("NATS_TOKEN", "t");
    Deno.env.set("NATS_NKEY_FILE", file);
    Deno.env.set("NATS_TLS_CA", "/ca.pem");
    assert.deepEqual(natsEnvCredentials(), {
      user: "u",
      pass: "p",
      token: "t",
      nkeySeed: "SUAEXAMPLESEED",
      tls: { caFile: "/ca.pem", certFile: undefined, keyFile: undefined },
    });
    Deno.env.set("NATS_NKEY_FILE", `${file}.missing`);
    assert.throws(() => natsEnvCredentials(), /NATS_NKEY_FILE .*\.missing/);
  } finally {
    keys.forEach((k, i) =>
      saved[i] === undefined ? Deno.env.delete(k) : Deno.env.set(k, saved[i]!)
    );
    Deno.removeSync(file);
  }
});

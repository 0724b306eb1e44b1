/**
 * A throwaway TLS certificate for tests that start TLS-enabled nats-servers. It needs
 * `openssl`; without it those tests fail saying so (they are not skipped).
 */
import assert from "node:assert/strict";

const OPENSSL = "openssl";

/**
 * Writes `<dir>/key.pem` and `<dir>/cert.pem`: a self-signed P-256 cert for 127.0.0.1/localhost
 * and the addresses `ips` (other hosts' servers that present it).
 */
export async function selfSignedCert(dir: string, ips: string[] = []): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(OPENSSL, {
      args: [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        `subjectAltName=${["127.0.0.1", ...ips].map((ip) => `IP:${ip}`).join(",")},DNS:localhost`,
        "-keyout",
        `${dir}/key.pem`,
        "-out",
        `${dir}/cert.pem`,
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    throw new Error(
      `${OPENSSL} is not installed; the TLS tests need it to make a certificate ` +
        "(Debian/Ubuntu: apt-get install -y openssl)",
    );
  }
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
}

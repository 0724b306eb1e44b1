/**
 * A socket's late errors after its connection is gone (runtime/connect.ts): a write after
 * either side ended it, reported with no listener left, must not end a process that talks to
 * NATS, while any other uncaught error still does.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { guardLateSocketErrors } from "../runtime/connect.ts";

/**
 * A real TCP socket whose connection has ended: this side ended it (as nats.js's transport ends
 * its side when the server ends the connection) while the server keeps its own open, or the
 * server ended it.
 */
async function endedSocket(
  by: "us" | "peer",
): Promise<{ sock: net.Socket; close(): Promise<void> }> {
  const peers: net.Socket[] = [];
  const server = net.createServer((s) => by === "peer" ? s.end() : peers.push(s));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const sock = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
  await new Promise<void>((r) => sock.once(by === "peer" ? "end" : "connect", () => r()));
  if (by === "us") sock.end();
  const close = async () => {
    sock.destroy();
    for (const p of peers) p.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  };
  return { sock, close };
}

/** Writes to `sock` as nats.js's transport does on close: no "error" listener remains. */
async function writeWithNoListener(sock: net.Socket): Promise<string | undefined> {
  sock.removeAllListeners();
  let failed: (Error & { code?: string }) | null = null;
  sock.write(new Uint8Array([1]), (e) => (failed = e ?? null));
  // The stream reports the error on a later tick; the test runner fails the test if it escapes.
  await new Promise((r) => setTimeout(r, 50));
  assert.ok(failed, "the write itself failed");
  return (failed as Error & { code?: string }).code;
}

for (
  const [by, code] of [["us", "ERR_STREAM_WRITE_AFTER_END"], ["peer", "EPIPE"]] as const
) {
  Deno.test(`a write after ${by === "us" ? "this side" : "the peer"} ended the connection, with no listener left, is dropped by the guard`, async () => {
    guardLateSocketErrors();
    const { sock, close } = await endedSocket(by);
    try {
      assert.equal(await writeWithNoListener(sock), code);
    } finally {
      await close();
    }
  });
}

Deno.test("the guard leaves any other uncaught error alone", async () => {
  guardLateSocketErrors();
  let seen: unknown = null;
  const mine = (e: Event) => {
    seen = (e as ErrorEvent).error;
    e.preventDefault();
  };
  globalThis.addEventListener("error", mine);
  try {
    setTimeout(() => {
      throw new Error("not a socket's");
    }, 0);
    await new Promise((r) => setTimeout(r, 50));
  } finally {
    globalThis.removeEventListener("error", mine);
  }
  assert.ok(seen instanceof Error && seen.message === "not a socket's", `seen: ${seen}`);
});

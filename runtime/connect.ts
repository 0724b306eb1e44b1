/**
 * Connecting to NATS by URL: `nats://` (TCP) or `ws://` / `wss://` (WebSocket).
 *
 * TCP goes through `@nats-io/transport-node`, which turns Nagle off. WebSocket goes through
 * `wsconnect` with a socket from the npm `ws` package: Deno's built-in WebSocket client leaves
 * Nagle on, which costs tens of milliseconds per small request/reply, while `ws` runs on
 * `node:net` with `setNoDelay`.
 * @module
 */
import { type ConnectionOptions, type NatsConnection, wsconnect } from "@nats-io/nats-core";
import { connect as tcpConnect } from "@nats-io/transport-node";
// @ts-types="./ws_types.d.ts"
import WebSocket from "ws";
import { InvalidArgumentError } from "./errors.ts";

/** TLS settings, passed through to the NATS client (files are read by the client). */
export interface TlsSettings {
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  /** Requires the server to be configured with `handshake_first`. */
  handshakeFirst?: boolean;
}

/**
 * Credentials for a NATS server. Serialisable on purpose: a system hands them to the node
 * processes it starts (through the environment, never the command line).
 */
export interface Credentials {
  user?: string;
  pass?: string;
  token?: string;
  /** A `.creds` file (JWT and nkey seed), as `nsc` writes it. */
  credsFile?: string;
  /** The seed (`SU...`) of a user nkey the server lists; the client signs the server's nonce. */
  nkeySeed?: string;
  tls?: TlsSettings;
  /**
   * Prefix of this identity's reply inboxes, when its user may read only those (node users of
   * an embedded server). Default `_INBOX`.
   */
  inboxPrefix?: string;
}

/** Options of {@link connectNats}. */
export interface ConnectNatsOptions extends Credentials {
  /** Connection name shown by the server's monitoring. */
  name?: string;
  /** Any further nats.js connection options (e.g. an `authenticator`), applied last. */
  extra?: Partial<ConnectionOptions>;
}

/** Environment variable through which node processes receive credentials. */
export const CREDENTIALS_ENV = "ACTORS_NATS_CREDENTIALS";

/** The scheme family of a server URL. */
export function transportOf(url: string): "tcp" | "ws" {
  const scheme = url.split("://")[0].toLowerCase();
  if (scheme === "ws" || scheme === "wss") return "ws";
  if (scheme === "nats" || scheme === "tls" || !url.includes("://")) return "tcp";
  throw new InvalidArgumentError(`unsupported NATS URL scheme in ${url} (use nats:// or ws://)`);
}

let socketGuard = false;

/**
 * Two late socket errors of nats.js's TCP transport under Deno's node:net concern a socket that
 * is already closed, and would otherwise end the process as "error" events nobody listens to:
 *
 * - When a server refuses a client (bad credentials), nats.js lets go of the socket and the
 *   peer's reset can surface afterwards (`ECONNRESET` on read).
 * - When a server goes away (its host killed), the transport answers the peer's end by ending
 *   its side, and a frame it was flushing at that moment is written after the end; the stream
 *   reports `ERR_STREAM_WRITE_AFTER_END` on the next tick, after the transport's close handler
 *   has removed its listeners (`EPIPE` when the peer's end arrived first). The client
 *   reconnects to another server regardless: the frame was lost with the connection, and its
 *   requests time out and are retried like any other.
 *
 * Both are dropped here; any other uncaught error is left alone. Exported for its test.
 */
export function guardLateSocketErrors(): void {
  if (socketGuard) return;
  socketGuard = true;
  globalThis.addEventListener("error", (e) => {
    const err = (e as ErrorEvent).error as { code?: string; syscall?: string } | undefined;
    if (err?.code === "ECONNRESET" && err.syscall === "read") e.preventDefault();
    if (err?.code === "ERR_STREAM_WRITE_AFTER_END" || err?.code === "EPIPE") e.preventDefault();
  });
}

/** Connects to one or more server URLs of the same scheme family. */
export async function connectNats(
  servers: string | string[],
  options: ConnectNatsOptions = {},
): Promise<NatsConnection> {
  const list = Array.isArray(servers) ? servers : [servers];
  if (list.length === 0) throw new InvalidArgumentError("no NATS server URL given");
  const kinds = new Set(list.map(transportOf));
  if (kinds.size > 1) {
    throw new InvalidArgumentError("mixing nats:// and ws:// URLs is not supported");
  }
  const base: ConnectionOptions = {
    servers: list,
    name: options.name,
    user: options.user,
    pass: options.pass,
    token: options.token,
    inboxPrefix: options.inboxPrefix,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    // The URLs in the order given: the first is this host's own server (README.md, "Running on
    // several hosts"), the others only a way out while it is down. nats.js would otherwise pick
    // one at random, and a process joined through another host's server loses its heartbeats
    // whenever that host is cut off.
    noRandomize: true,
    ...await authOptions(options),
    ...options.extra,
  };
  if (kinds.has("tcp")) {
    guardLateSocketErrors();
    return await tcpConnect(base);
  }
  return await wsconnect({
    ...base,
    wsFactory: (url: string) => {
      const tls = options.tls;
      const socket = new WebSocket(url, {
        perMessageDeflate: false,
        ca: tls?.caFile ? Deno.readTextFileSync(tls.caFile) : undefined,
        cert: tls?.certFile ? Deno.readTextFileSync(tls.certFile) : undefined,
        key: tls?.keyFile ? Deno.readTextFileSync(tls.keyFile) : undefined,
      });
      return Promise.resolve({
        socket: socket as unknown as globalThis.WebSocket,
        encrypted: url.startsWith("wss://"),
      });
    },
  });
}

async function authOptions(c: Credentials): Promise<Partial<ConnectionOptions>> {
  const out: Partial<ConnectionOptions> = {};
  if (c.tls) out.tls = { ...c.tls };
  if (c.credsFile && c.nkeySeed) {
    throw new InvalidArgumentError("give either a creds file or an nkey seed, not both");
  }
  if (c.credsFile) {
    const { credsAuthenticator } = await import("@nats-io/nats-core");
    out.authenticator = credsAuthenticator(await Deno.readFile(c.credsFile));
  }
  if (c.nkeySeed) {
    const { nkeyAuthenticator } = await import("@nats-io/nats-core");
    out.authenticator = nkeyAuthenticator(new TextEncoder().encode(c.nkeySeed.trim()));
  }
  return out;
}

/**
 * Takes credentials out of server URLs (`nats://user:pass@host`, `nats://token@host`), so that
 * they are neither logged nor passed on command lines. Credentials given explicitly win.
 */
export function splitUrlCredentials(
  urls: readonly string[],
  explicit: Credentials = {},
): { servers: string[]; credentials: Credentials } {
  const found: Credentials = {};
  const servers = urls.map((raw) => {
    const url = raw.trim();
    const m = /^([a-z]+:\/\/)([^@/]*)@(.*)$/i.exec(url);
    if (!m) return url;
    const [user, pass] = m[2].split(":", 2).map(decodeURIComponent);
    if (pass !== undefined) {
      found.user ??= user;
      found.pass ??= pass;
    } else if (user) {
      found.token ??= user;
    }
    return m[1] + m[3];
  });
  const credentials: Credentials = { ...explicit };
  if (!explicit.user && !explicit.token && !explicit.credsFile && !explicit.nkeySeed) {
    if (found.user !== undefined) {
      credentials.user = found.user;
      credentials.pass = found.pass;
    } else if (found.token !== undefined) {
      credentials.token = found.token;
    }
  }
  return { servers, credentials };
}

/**
 * Credentials from the usual NATS environment variables: NATS_USER and NATS_PASSWORD,
 * NATS_TOKEN, NATS_NKEY_SEED (or NATS_NKEY_FILE), NATS_CREDS, and NATS_TLS_CA, NATS_TLS_CERT,
 * NATS_TLS_KEY. Secrets in the environment stay off command lines, which other users can read.
 */
export function natsEnvCredentials(): Credentials {
  const get = (k: string) => Deno.env.get(k) || undefined;
  const c: Credentials = {};
  if (get("NATS_USER")) {
    c.user = get("NATS_USER");
    c.pass = get("NATS_PASSWORD");
  }
  c.token = get("NATS_TOKEN");
  c.credsFile = get("NATS_CREDS");
  c.nkeySeed = get("NATS_NKEY_SEED");
  const nkeyFile = get("NATS_NKEY_FILE");
  if (!c.nkeySeed && nkeyFile) {
    try {
      c.nkeySeed = Deno.readTextFileSync(nkeyFile).trim();
    } catch (e) {
      throw new InvalidArgumentError(`NATS_NKEY_FILE ${nkeyFile}: ${(e as Error).message}`);
    }
  }
  const [caFile, certFile, keyFile] = ["NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"].map(get);
  if (caFile || certFile || keyFile) c.tls = { caFile, certFile, keyFile };
  for (const k of Object.keys(c) as (keyof Credentials)[]) if (c[k] === undefined) delete c[k];
  return c;
}

/** Reads credentials handed over through {@link CREDENTIALS_ENV}, if any. */
export function credentialsFromEnv(): Credentials {
  const raw = Deno.env.get(CREDENTIALS_ENV);
  if (!raw) return {};
  try {
    return JSON.parse(raw) as Credentials;
  } catch {
    throw new InvalidArgumentError(`${CREDENTIALS_ENV} is not valid JSON`);
  }
}

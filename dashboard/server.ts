/**
 * The dashboard's HTTP server: one self-contained page (`GET /`), the state as JSON
 * (`GET /api/state`, checked by `dashboardStateSchema`) and the events as they happen
 * (`GET /api/events`, Server-Sent Events). Read-only: nothing it serves can change the system.
 *
 * Bound to loopback it answers this machine only (and checks the `Host` header, so that a web
 * page elsewhere cannot reach it by rebinding a name to 127.0.0.1). Bound to any other address
 * it needs a token, which every request must carry (`Authorization: Bearer <token>` or
 * `?token=<token>`; the page passes on the one in its own address); without one it does not
 * start, and a request without it gets 401.
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { DomainError } from "../core/errors.ts";
import { authority, isLoopback, type Listen } from "../cli/listen.ts";
import type { EventRecord, System } from "../runtime/mod.ts";
import { DashboardModel, dashboardStateSchema } from "./state.ts";
import { PAGE_SCRIPT, renderPage } from "./page.ts";

/** The dashboard cannot start as asked (no token for a non-loopback address...). */
export class DashboardError extends DomainError {
  static override readonly code: string = "DASHBOARD";
}

/** Options of {@link serveDashboard}. */
export interface DashboardOptions extends Listen {
  /** Required unless `hostname` is loopback; when given, required from every request. */
  token?: string | null;
  /** How often the events stream sends the whole state (nodes, actors, summary). Default 1 s. */
  stateEveryMs?: number;
}

/** A running dashboard. */
export interface Dashboard {
  /** Where it listens, e.g. `http://127.0.0.1:8470/` (without the token). */
  readonly url: string;
  readonly hostname: string;
  readonly port: number;
  readonly model: DashboardModel;
  /** Stops serving (open event streams end) and stops following the system. */
  close(): Promise<void>;
}

/** Throws a DashboardError when `listen` is not loopback and there is no token. */
export function checkAccess(listen: Listen, token: string | null | undefined): void {
  if (!isLoopback(listen.hostname) && !token) {
    throw new DashboardError(
      `the dashboard at ${authority(listen)} would be reachable from other machines: give it a ` +
        `token (--dashboard-token, or HD_DASHBOARD_TOKEN in the environment), or bind it to ` +
        `127.0.0.1`,
    );
  }
  if (token !== null && token !== undefined && token.length < 8) {
    throw new DashboardError("the dashboard's token must have at least 8 characters");
  }
}

function sameSecret(given: string, token: string): boolean {
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(token).digest();
  return timingSafeEqual(a, b);
}

const SECURITY_HEADERS = {
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
};

const SCRIPT_HASH = createHash("sha256").update(PAGE_SCRIPT).digest("base64");
const CSP = `default-src 'none'; script-src 'sha256-${SCRIPT_HASH}'; style-src 'unsafe-inline'; ` +
  `connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; ` +
  `frame-ancestors 'none'`;

function text(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(body + "\n", {
    status,
    headers: { ...SECURITY_HEADERS, "content-type": "text/plain; charset=utf-8", ...headers },
  });
}

const enc = new TextEncoder();

function sse(event: string, data: unknown): Uint8Array {
  return enc.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

/** Bytes an events stream may have waiting for a slow reader before it is dropped. */
const MAX_BACKLOG = 8 * 1024 * 1024;

/**
 * Serves a dashboard of `system` (any process of it: the job's own, or one that joined by URL).
 * Throws a DashboardError when a non-loopback address has no token.
 */
export function serveDashboard(system: System, o: DashboardOptions): Promise<Dashboard> {
  try {
    return Promise.resolve(start(system, o));
  } catch (e) {
    return Promise.reject(e);
  }
}

function start(system: System, o: DashboardOptions): Dashboard {
  const token = o.token ?? null;
  checkAccess(o, token);
  const loopbackOnly = token === null;
  const model = new DashboardModel(system);
  const streams = new Set<ReadableStreamDefaultController<Uint8Array>>();
  const page = renderPage();
  const stateEveryMs = o.stateEveryMs ?? 1000;

  const push = (c: ReadableStreamDefaultController<Uint8Array>, chunk: Uint8Array) => {
    try {
      if ((c.desiredSize ?? 0) < -MAX_BACKLOG) {
        c.close();
        streams.delete(c);
        return;
      }
      c.enqueue(chunk);
    } catch {
      streams.delete(c);
    }
  };
  const offEvents = model.listen((r: EventRecord) => {
    const chunk = sse("event", r);
    for (const c of streams) push(c, chunk);
  });
  const ticker = setInterval(() => {
    if (streams.size === 0) return;
    const chunk = sse("state", model.snapshot({ steps: false }));
    for (const c of streams) push(c, chunk);
  }, stateEveryMs);
  const pinger = setInterval(() => {
    for (const c of streams) push(c, enc.encode(": ping\n\n"));
  }, 15_000);

  const authorized = (req: Request, url: URL): boolean => {
    if (token === null) return true;
    const auth = req.headers.get("authorization");
    const given = auth?.startsWith("Bearer ") ? auth.slice(7) : url.searchParams.get("token");
    return given !== null && sameSecret(given, token);
  };

  const handler = (req: Request): Response => {
    const url = new URL(req.url);
    if (loopbackOnly) {
      // A page elsewhere could point a name of its own at 127.0.0.1 and read this one.
      const host = (req.headers.get("host") ?? "").replace(/:\d+$/, "");
      if (!isLoopback(host)) return text(403, "403: this dashboard answers loopback names only");
    }
    if (!authorized(req, url)) {
      return text(401, "401: this dashboard needs its token (?token=... or a Bearer header)", {
        "www-authenticate": 'Bearer realm="dashboard"',
      });
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      return text(405, "405: the dashboard is read-only", { allow: "GET, HEAD" });
    }
    switch (url.pathname) {
      case "/":
      case "/index.html":
        return new Response(page, {
          headers: {
            ...SECURITY_HEADERS,
            "content-type": "text/html; charset=utf-8",
            "content-security-policy": CSP,
          },
        });
      case "/api/state": {
        const state = dashboardStateSchema.parse(model.snapshot());
        return new Response(JSON.stringify(state), {
          headers: { ...SECURITY_HEADERS, "content-type": "application/json" },
        });
      }
      case "/api/events": {
        const headers = {
          ...SECURITY_HEADERS,
          "content-type": "text/event-stream; charset=utf-8",
          "x-accel-buffering": "no",
        };
        if (req.method === "HEAD") return new Response(null, { headers });
        let me: ReadableStreamDefaultController<Uint8Array>;
        const body = new ReadableStream<Uint8Array>({
          start(c) {
            me = c;
            c.enqueue(enc.encode("retry: 2000\n\n"));
            c.enqueue(sse("hello", dashboardStateSchema.parse(model.snapshot())));
            streams.add(c);
          },
          cancel() {
            streams.delete(me);
          },
        }, { highWaterMark: MAX_BACKLOG, size: (chunk) => chunk.byteLength });
        return new Response(body, { headers });
      }
      case "/favicon.ico":
        return new Response(null, { status: 204, headers: SECURITY_HEADERS });
      default:
        return text(404, "404: not here");
    }
  };

  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname: o.hostname,
      port: o.port,
      onListen: () => {},
      onError: (e) => {
        console.error("dashboard:", e);
        return text(500, "500: the dashboard failed; see its log");
      },
    }, handler);
  } catch (e) {
    clearInterval(ticker);
    clearInterval(pinger);
    offEvents();
    model.close();
    if (e instanceof Deno.errors.AddrInUse) {
      throw new DashboardError(`the dashboard cannot listen on ${authority(o)}: it is in use`);
    }
    throw e;
  }
  const port = server.addr.port;
  const shown = { hostname: o.hostname, port };
  let closed: Promise<void> | undefined;
  return {
    url: `http://${authority(shown)}/`,
    hostname: o.hostname,
    port,
    model,
    close() {
      closed ??= (async () => {
        clearInterval(ticker);
        clearInterval(pinger);
        offEvents();
        for (const c of streams) {
          try {
            c.close();
          } catch { /* already closed */ }
        }
        streams.clear();
        // Graceful: the streams just closed end cleanly, then the server stops.
        await server.shutdown();
        model.close();
      })();
      return closed;
    },
  };
}

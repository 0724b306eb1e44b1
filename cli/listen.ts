/**
 * `[HOST:]PORT` listen addresses for the programs that serve HTTP (the dashboard), and whether a
 * host is the loopback interface (reachable from this machine only).
 * @module
 */
import { z } from "zod";
import { FlagError } from "./flags.ts";

/** Where a server listens. */
export interface Listen {
  hostname: string;
  /** 0: any free port. */
  port: number;
}

export const listenSchema: z.ZodType<Listen> = z.object({
  hostname: z.string().min(1),
  port: z.number().int().min(0).max(65535),
});

/** The host a `PORT` without one listens on: this machine only. */
export const DEFAULT_LISTEN_HOST = "127.0.0.1";

/**
 * Parses `PORT`, `HOST:PORT` or `[IPv6]:PORT` (port 0: any free port); a FlagError names
 * `--flag` otherwise.
 */
export function parseListen(raw: string, flag: string, defaultHost = DEFAULT_LISTEN_HOST): Listen {
  const m = /^(?:(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9_.-]+)):)?(\d{1,5})$/.exec(raw.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port <= 65535)) {
    throw new FlagError(
      `--${flag} must be PORT or HOST:PORT (e.g. 8080, 0.0.0.0:8080, [::1]:8080), got ` +
        JSON.stringify(raw),
      flag,
    );
  }
  return { hostname: m[1] ?? m[2] ?? defaultHost, port };
}

/** Whether `host` is this machine's loopback interface: localhost, 127.0.0.0/8 or ::1. */
export function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) ||
    h === "0:0:0:0:0:0:0:1";
}

/** `host:port` as a URL's authority (IPv6 in brackets). */
export function authority(l: Listen): string {
  return l.hostname.includes(":") ? `[${l.hostname}]:${l.port}` : `${l.hostname}:${l.port}`;
}

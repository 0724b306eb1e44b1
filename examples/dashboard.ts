/**
 * A live dashboard of a running system, attached by URL:
 *
 *   NATS_USER=hd NATS_PASSWORD=... deno task dashboard --nats nats://gpu1:4222
 *   deno task dashboard --nats nats://gpu1:4222 --listen 0.0.0.0:8470 --dashboard-token ...
 *
 * It joins the system as a process of its own (hosting nothing) and serves the page, the state
 * and the events of everything on it (nodes, actors, the training runs' events) until stopped
 * (Ctrl-C). Credentials come from the NATS_* variables or the URL, as for `deno task node`.
 */
import { z } from "zod";
import { defineFlags, exitWithFlagError, FlagError } from "../cli/flags.ts";
import { listenSchema, parseListen } from "../cli/listen.ts";
import { init, natsEnvCredentials } from "../runtime/mod.ts";
import { checkAccess, DashboardError, dashboardToken, serveDashboard } from "../dashboard/mod.ts";

export const DASHBOARD_FLAGS = defineFlags({
  name: "dashboard",
  about: "Serve a live dashboard of a running actor system (read-only).",
  usage: "deno task dashboard --nats URL[,URL...] [--listen [HOST:]PORT] [flags]",
  flags: {
    nats: {
      type: "custom",
      parse: (raw: string, flag: string): string => {
        for (const url of raw.split(",")) {
          if (!/^(nats|tls|ws|wss):\/\/./.test(url.trim())) {
            throw new FlagError(
              `--${flag} must be nats://, tls://, ws:// or wss:// URLs, got ${url}`,
              flag,
            );
          }
        }
        return raw;
      },
      schema: z.string(),
      required: true,
      metavar: "URL[,URL...]",
      help: "the system's NATS servers (credentials: NATS_* variables or user:pass@ in the URL)",
    },
    system: { type: "string", default: "default", metavar: "NAME", help: "the system to show" },
    listen: {
      type: "custom",
      parse: (raw: string, flag: string) => parseListen(raw, flag),
      schema: listenSchema,
      default: { hostname: "127.0.0.1", port: 8470 },
      defaultText: "127.0.0.1:8470",
      metavar: "[HOST:]PORT",
      help: "where to serve it; HOST defaults to 127.0.0.1, any other needs a token",
    },
    "dashboard-token": {
      type: "string",
      nonEmpty: true,
      default: null,
      metavar: "TOKEN",
      help: "the token every request must carry (default $HD_DASHBOARD_TOKEN); required when " +
        "not bound to loopback",
      secret: true,
    },
  },
});

if (import.meta.main) {
  const { options: o } = DASHBOARD_FLAGS.main();
  const token = dashboardToken(o.dashboardToken);
  try {
    checkAccess(o.listen, token);
  } catch (e) {
    if (e instanceof DashboardError) {
      exitWithFlagError(DASHBOARD_FLAGS.name, new FlagError(e.message, "dashboard-token"));
    }
    throw e;
  }
  try {
    const system = await init({
      nats: o.nats.split(",").map((u) => u.trim()),
      system: o.system,
      nodeId: `dashboard-${crypto.randomUUID().slice(0, 8)}`,
      ...natsEnvCredentials(),
    });
    const dashboard = await serveDashboard(system, { ...o.listen, token });
    console.error(
      `dashboard of system ${o.system}: ${dashboard.url}` +
        (token ? " (add ?token=<the token> to open it)" : ""),
    );
    const stop = async () => {
      await dashboard.close();
      await system.shutdown();
      Deno.exit(0);
    };
    Deno.addSignalListener("SIGINT", stop);
    Deno.addSignalListener("SIGTERM", stop);
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    console.error(`dashboard: ${err.name}: ${err.message}`);
    Deno.exit(1);
  }
}

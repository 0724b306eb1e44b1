/**
 * `deno task finetune --dashboard [HOST:]PORT`: the fine-tuning job with a dashboard of its system
 * served from the same process, from the moment the system is up until the job ends.
 * @module
 */
import { FlagError } from "../cli/flags.ts";
import { type JobIo, runFinetune } from "../actors/job.ts";
import type { FinetuneOptions } from "../train/cli/options.ts";
import type { RunReport } from "../train/report/report.ts";
import { checkAccess, type Dashboard, DashboardError, serveDashboard } from "./server.ts";

/** Where the dashboard's token comes from when no flag gives it. */
export const TOKEN_ENV = "HD_DASHBOARD_TOKEN";

/** The token: the flag's, else the environment's, else none. */
export function dashboardToken(flag: string | null): string | null {
  return flag ?? (Deno.env.get(TOKEN_ENV) || null);
}

/**
 * Checks `--dashboard` against its token (the flag's or the environment's): a non-loopback
 * address without one is a FlagError naming `--dashboard-token`. Returns the token.
 */
export function checkDashboardFlags(o: FinetuneOptions): string | null {
  const token = dashboardToken(o.dashboardToken);
  if (o.dashboard === null) return token;
  try {
    checkAccess(o.dashboard, token);
  } catch (e) {
    if (e instanceof DashboardError) throw new FlagError(e.message, "dashboard-token");
    throw e;
  }
  return token;
}

/**
 * Runs the job (`runFinetune`), serving a dashboard when `o.dashboard` is set, from the moment
 * the system is up until the job ends. The flags are checked first ({@link checkDashboardFlags}),
 * before anything starts.
 */
export async function runFinetuneWithDashboard(
  o: FinetuneOptions,
  io: JobIo,
): Promise<RunReport[]> {
  const listen = o.dashboard;
  const token = checkDashboardFlags(o);
  if (listen === null) return await runFinetune(o, io);
  let dashboard: Dashboard | undefined;
  try {
    return await runFinetune(o, {
      ...io,
      onSystem: async (system) => {
        await io.onSystem?.(system);
        dashboard = await serveDashboard(system, { ...listen, token });
        io.log(`dashboard: ${dashboard.url}${token ? " (add ?token=<the token> to open it)" : ""}`);
      },
    });
  } finally {
    await dashboard?.close();
  }
}

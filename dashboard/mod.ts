/**
 * The live dashboard of a system: its state model (fed by the runtime's introspection and events
 * API), its HTTP server (one self-contained page, `/api/state`, `/api/events`) and the
 * fine-tuning job with a dashboard (`--dashboard`).
 * @module
 */
export {
  checkAccess,
  type Dashboard,
  DashboardError,
  type DashboardOptions,
  serveDashboard,
} from "./server.ts";
export {
  DashboardModel,
  type DashboardState,
  dashboardStateSchema,
  type StepRecord,
  stepRecordSchema,
  summarize,
  type Summary,
  type Training,
  trainingSchema,
} from "./state.ts";
export { PAGE_SCRIPT, renderPage } from "./page.ts";
export {
  checkDashboardFlags,
  dashboardToken,
  runFinetuneWithDashboard,
  TOKEN_ENV,
} from "./finetune.ts";

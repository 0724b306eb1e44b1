/**
 * `--export-adapter DIR` of a fine-tuning run: once the run's folder is written, its model is
 * exported as a PEFT adapter of the base model into DIR, and the export's figures join the run's
 * `report.json` (key `adapter_export`) and `report.html`.
 * @module
 */
import type { FinetuneOptions } from "../cli/options.ts";
import { dtypeOfTorch } from "../../model/half_float.ts";
import { renderReportHtml } from "../report/html.ts";
import { type RunReport, writeReportJson } from "../report/report.ts";
import { type AdapterExport, adapterSummary, checkAdapterOut, exportAdapter } from "./export.ts";

/** The adapter folder of each method's run: DIR itself, or DIR/<method> with --compare. */
export function adapterFolders(
  o: Pick<FinetuneOptions, "exportAdapter" | "compare" | "method">,
  methods: readonly string[],
): { method: string; dir: string }[] {
  if (o.exportAdapter === null) return [];
  return o.compare
    ? methods.map((method) => ({ method, dir: `${o.exportAdapter}/${method}` }))
    : [{ method: o.method, dir: o.exportAdapter }];
}

/** Before a run: every adapter folder it will write must be empty, or --overwrite given. */
export async function checkAdapterFolders(
  o: Pick<FinetuneOptions, "exportAdapter" | "compare" | "method" | "overwrite">,
  methods: readonly string[],
): Promise<void> {
  for (const { dir } of adapterFolders(o, methods)) {
    await checkAdapterOut(dir, o.overwrite, "--export-adapter");
  }
}

/** The export as report.json holds it (the per-matrix singular values stay in the folder). */
export function reportAdapterExport(e: AdapterExport): NonNullable<RunReport["adapter_export"]> {
  const matrices: NonNullable<RunReport["adapter_export"]>["matrices"] = {};
  for (const [name, m] of Object.entries(e.matrices)) {
    const { singular_values: _, ...rest } = m;
    matrices[name] = rest;
  }
  return { ...e, matrices };
}

/**
 * Exports the finished run in `o.out` (whose report is `report`) into `dir` and rewrites its
 * report.json and report.html with `adapter_export`. For a method without a rank bound (full)
 * the adapter's rank is the run's `--rank`, capped by each matrix.
 */
export async function exportRunAdapter(
  o: FinetuneOptions,
  report: RunReport,
  dir: string,
  log: (line: string) => void = () => {},
): Promise<RunReport> {
  const e = await exportAdapter({
    base: o.model,
    tuned: o.out,
    out: dir,
    method: o.method,
    settings: { rank: o.rank, workers: o.workers },
    targets: o.targets,
    fallbackRank: o.rank,
    svd: o.svd,
    svdNiter: o.svdNiter,
    seed: o.seed,
    overwrite: o.overwrite,
    dtype: o.saveDtype === null ? "F32" : dtypeOfTorch(o.saveDtype),
  });
  adapterSummary(e).forEach(log);
  const updated: RunReport = { ...report, adapter_export: reportAdapterExport(e) };
  await writeReportJson(`${o.out}/report.json`, updated);
  await Deno.writeTextFile(`${o.out}/report.html`, renderReportHtml(updated));
  return updated;
}

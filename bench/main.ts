// Runs the benchmark suites in bench/ and prints their figures.
//
//   deno task bench                 every suite, as a table
//   deno task bench --json          one JSON object per line: {"name", "value", "unit"}, and
//                                   "note" with value null for a figure not measured
//   deno task bench runtime gpu     only the suites whose file name starts with these words
//   deno task bench cluster         several hosts as network namespaces (needs root, `ip netns`)
//   deno task bench scale           real model sizes (135M, 180M, 1B) end to end (minutes)
//
// A suite is a file `bench/<name>_bench.ts` exporting `run(report)`; it calls `report` once per
// figure. Figures are measured, never asserted.
import { defineFlags } from "../cli/flags.ts";
import type { Figure } from "./figure.ts";

const FLAGS = defineFlags({
  name: "bench",
  about: "Runs the benchmark suites in bench/ and prints their figures.",
  usage: "deno task bench [flags] [SUITE...]",
  positionals: { metavar: "SUITE...", help: "only the suites whose file name starts with these" },
  flags: {
    json: { type: "boolean", help: 'one JSON object per line: {"name", "value", "unit"}' },
    "gpu-mode": {
      type: "enum",
      choices: ["kernels", "machine", "machine-small"],
      default: "kernels",
      help: "gpu suite: the small config's kernels, or matmul 1024–8192 f32/f16, attention and " +
        "cross-entropy at model sizes (machine; machine-small: the same at small sizes)",
    },
  },
});
const { options, positionals } = FLAGS.main();

const dir = new URL(".", import.meta.url);
const suites = [...Deno.readDirSync(dir)]
  .map((e) => e.name)
  .filter((n) => n.endsWith("_bench.ts"))
  .map((n) => n.slice(0, -"_bench.ts".length))
  .filter((n) => positionals.length === 0 || positionals.some((p) => n.startsWith(p)))
  .sort();
if (suites.length === 0) {
  console.error(`bench: no suite matches ${positionals.join(", ")}`);
  Deno.exit(2);
}

const rows: (Figure & { suite: string })[] = [];
for (const suite of suites) {
  const mod = await import(new URL(`${suite}_bench.ts`, dir).href);
  if (!options.json) console.log(`\n== ${suite}`);
  await mod.run((f: Figure) => {
    rows.push({ ...f, suite });
    if (options.json) {
      console.log(JSON.stringify({ name: f.name, value: f.value, unit: f.unit, note: f.note }));
    } else if (f.note !== undefined) {
      console.log(`  ${f.name.padEnd(56)} ${f.note}`);
    } else {
      const v = Number.isInteger(f.value) || Math.abs(f.value) >= 1e4
        ? String(Math.round(f.value))
        : f.value.toPrecision(4);
      console.log(`  ${f.name.padEnd(56)} ${v.padStart(12)} ${f.unit}`);
    }
  }, options);
}

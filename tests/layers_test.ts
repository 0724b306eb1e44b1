// The layers of the code base import only downwards: core/ at the very bottom (the base of the
// project's errors, importing nothing), cli/ (the flag tables, which every program uses, the
// runtime's node process included), then runtime/ and gpu/ (and not each other), then
// model/, train/, actors/, and dashboard/ (the live dashboard of a system and its runs). A
// relative import that climbs a layer fails here with the file and the import named.
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);
const RANK: Record<string, number> = {
  core: -1,
  cli: 0,
  runtime: 1,
  gpu: 1,
  model: 2,
  train: 3,
  actors: 4,
  infer: 4,
  dashboard: 5,
};

async function* tsFiles(dir: URL): AsyncGenerator<URL> {
  for await (const e of Deno.readDir(dir)) {
    const u = new URL(e.name + (e.isDirectory ? "/" : ""), dir);
    if (e.isDirectory) yield* tsFiles(u);
    else if (e.name.endsWith(".ts")) yield u;
  }
}

function layerOf(u: URL): string {
  return u.pathname.slice(ROOT.pathname.length).split("/")[0];
}

Deno.test("no import runs upward: core < cli < runtime, gpu < model < train < actors < dashboard", async () => {
  const bad: string[] = [];
  let files = 0;
  for (const layer of Object.keys(RANK)) {
    for await (const file of tsFiles(new URL(`${layer}/`, ROOT))) {
      files++;
      const src = await Deno.readTextFile(file);
      for (const m of src.matchAll(/(?:from|import\()\s*["'](\.\.?\/[^"']+)["']/g)) {
        const target = layerOf(new URL(m[1], file));
        if (!(target in RANK)) continue;
        const upward = RANK[target] > RANK[layer] ||
          (RANK[target] === RANK[layer] && target !== layer);
        if (upward) bad.push(`${file.pathname.slice(ROOT.pathname.length)} imports ${m[1]}`);
      }
    }
  }
  assert.ok(files > 100, `only ${files} files found: is the layout as expected?`);
  assert.deepEqual(bad, []);
});

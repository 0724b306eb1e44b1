import assert from "node:assert/strict";
import { dataFiles } from "../scripts/make_data.ts";

Deno.test("committed data/ files are exactly what scripts/make_data.ts generates", async () => {
  const root = new URL("..", import.meta.url).pathname;
  const files = dataFiles();
  assert.deepEqual(Object.keys(files).sort(), [
    "data/README.md",
    "data/bench/test.jsonl",
    "data/bench/train.jsonl",
    "data/codes/test.jsonl",
    "data/codes/train.jsonl",
    "data/corpus/train.txt",
    "data/corpus/valid.txt",
  ]);
  for (const [path, text] of Object.entries(files)) {
    const committed = await Deno.readTextFile(`${root}${path}`);
    assert.ok(
      committed === text,
      `${path} differs from the generator: run deno run -A scripts/make_data.ts`,
    );
  }
});

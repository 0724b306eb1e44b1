import assert from "node:assert/strict";
import {
  DataFileError,
  EmptyDatasetError,
  JsonlLineError,
  loadJsonl,
  parseJsonl,
} from "../train/data/mod.ts";

async function withFile(text: string, fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/data.jsonl`;
    await Deno.writeTextFile(path, text);
    await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("jsonl: default fields, task label or 'all', blank lines and CRLF", async () => {
  const text = [
    JSON.stringify({ prompt: "1+1=", response: "2", task: "arith" }),
    "",
    JSON.stringify({ prompt: "hi", response: "there", extra: 5 }) + "\r",
    JSON.stringify({ prompt: "é\n", response: "", task: null }),
    "   ",
  ].join("\n");
  await withFile(text, async (path) => {
    const ds = await loadJsonl(path);
    assert.equal(ds.source, path);
    assert.equal(ds.skipped, 0);
    assert.deepEqual(ds.examples, [
      { prompt: "1+1=", response: "2", task: "arith" },
      { prompt: "hi", response: "there", task: "all" },
      { prompt: "é\n", response: "", task: "all" },
    ]);
  });
});

Deno.test("jsonl: configurable field names (MetaMathQA query/response, type as task)", () => {
  const text = JSON.stringify({ query: "What is 2+3?", response: "5", type: "GSM_Rephrased" });
  const ds = parseJsonl(text, "mm.jsonl", {
    promptField: "query",
    responseField: "response",
    taskField: "type",
  });
  assert.deepEqual(ds.examples, [{ prompt: "What is 2+3?", response: "5", task: "GSM_Rephrased" }]);
  // The default names do not find a "query" field: the error names the missing field.
  assert.throws(
    () => parseJsonl(text, "mm.jsonl"),
    (e: unknown) => e instanceof JsonlLineError && e.line === 1 && /"prompt"/.test(e.message),
  );
});

Deno.test("jsonl: a malformed line is an error with file and line number", async () => {
  const good = JSON.stringify({ prompt: "a", response: "b" });
  const cases: [string, RegExp][] = [
    ["{not json", /invalid JSON/],
    ["[1, 2]", /not a JSON object/],
    ['"text"', /not a JSON object/],
    [JSON.stringify({ prompt: "a" }), /missing field "response"/],
    [JSON.stringify({ prompt: 3, response: "b" }), /"prompt" is not a string/],
    [JSON.stringify({ prompt: "a", response: ["b"] }), /"response" is not a string/],
    [JSON.stringify({ prompt: "a", response: "b", task: 7 }), /"task" is not a non-empty string/],
  ];
  for (const [bad, why] of cases) {
    await withFile([good, "", good, bad, good].join("\n"), async (path) => {
      await assert.rejects(() => loadJsonl(path), (e: unknown) => {
        assert.ok(e instanceof JsonlLineError, String(e));
        assert.equal(e.file, path);
        assert.equal(e.line, 4);
        assert.match(e.message, why);
        assert.ok(e.message.startsWith(`${path}:4: `), e.message);
        return true;
      });
    });
  }
});

Deno.test("jsonl: skipMalformed skips and counts bad lines", () => {
  const good = (i: number) => JSON.stringify({ prompt: `p${i}`, response: `r${i}` });
  const text = [
    good(0),
    "oops",
    good(1),
    "{}",
    JSON.stringify({ prompt: "x", response: 1 }),
    good(2),
  ]
    .join("\n");
  const ds = parseJsonl(text, "mixed.jsonl", { skipMalformed: true });
  assert.deepEqual(ds.examples.map((e) => e.prompt), ["p0", "p1", "p2"]);
  assert.equal(ds.skipped, 3);
  assert.deepEqual(ds.skippedLines, [2, 4, 5]);
});

Deno.test("jsonl: empty data sets and missing files are clear errors", async () => {
  assert.throws(
    () => parseJsonl("", "empty.jsonl"),
    (e: unknown) =>
      e instanceof EmptyDatasetError && /empty\.jsonl: the data set is empty/.test(e.message),
  );
  assert.throws(() => parseJsonl("\n\n  \n", "blank.jsonl"), EmptyDatasetError);
  assert.throws(
    () => parseJsonl("bad\nworse", "bad.jsonl", { skipMalformed: true }),
    (e: unknown) =>
      e instanceof EmptyDatasetError && /2 malformed line\(s\) skipped/.test(e.message),
  );
  const missing = `${await Deno.makeTempDir()}/none.jsonl`;
  await assert.rejects(
    () => loadJsonl(missing),
    (e: unknown) =>
      e instanceof DataFileError && e.file === missing && /no such data file/.test(e.message),
  );
  await Deno.remove(missing.slice(0, missing.lastIndexOf("/")));
});

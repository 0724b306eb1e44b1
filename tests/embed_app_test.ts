/**
 * The README's embedding example, as a user would run it: an app in a folder of its own, outside
 * this project, with the `deno.json`, actor module and `main.ts` the README shows (read from the
 * README's `<!-- embed: FILE -->` blocks, so the two cannot drift apart), next to a checkout of
 * the project. The app is run with `deno run -A main.ts` as a subprocess: it starts a private
 * nats-server and node processes, spawns its own actor on a node, calls it and shuts down.
 */
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);
const README = new URL("README.md", ROOT);
const RUN_TIMEOUT_MS = 180_000;

/** The code blocks of the README that follow an `<!-- embed: FILE -->` marker, by file name. */
function embedFiles(readme: string): Map<string, string> {
  const files = new Map<string, string>();
  const re = /<!-- embed: ([\w.-]+) -->\s*```\w*\n([\s\S]*?)\n```/g;
  for (const m of readme.matchAll(re)) files.set(m[1], m[2] + "\n");
  return files;
}

async function processesMentioning(text: string): Promise<string[]> {
  const out = await new Deno.Command("ps", { args: ["-eo", "pid=,args="], stdout: "piped" })
    .output();
  return new TextDecoder().decode(out.stdout).split("\n").filter((l) => l.includes(text));
}

Deno.test("the README's embedding example runs as an app of its own", async () => {
  const files = embedFiles(await Deno.readTextFile(README));
  assert.deepEqual(
    [...files.keys()].sort(),
    ["deno.json", "greeter.ts", "main.ts"],
    "README.md shows the app's deno.json, greeter.ts and main.ts",
  );
  const tmp = await Deno.makeTempDir({ prefix: "hd-pissa-embed-" });
  const root = decodeURIComponent(ROOT.pathname).replace(/\/$/, "");
  assert.ok(!tmp.startsWith(root + "/"), "the app lives outside the project");
  try {
    // The layout the README describes: the checkout in hd-pissa/, the app in my-app/.
    await Deno.symlink(root, `${tmp}/hd-pissa`);
    const app = `${tmp}/my-app`;
    await Deno.mkdir(app);
    for (const [name, text] of files) await Deno.writeTextFile(`${app}/${name}`, text);

    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "main.ts"],
      cwd: app,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(RUN_TIMEOUT_MS),
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, `the app failed (code ${out.code}):\n${stdout}\n${stderr}`);
    const m = /Hello, world! \(answered by process (\d+), this is (\d+)\)/.exec(stdout);
    assert.ok(m, `unexpected output:\n${stdout}\n${stderr}`);
    assert.notEqual(m[1], m[2], "the actor ran in a node process, not in the app's own");

    // shutdown() stopped the node processes and the server it started (the node processes run
    // with the app's deno.json, which names the temp folder).
    let left: string[] = [];
    for (let i = 0; i < 100; i++) {
      left = await processesMentioning(tmp);
      if (left.length === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(left, [], "no process of the app is left");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

// deno task chat driven through stdin as a subprocess on the shipped byte model (no chat
// template: the plain format): replies stream, /reset and /system answer, greedy replies repeat.
import assert from "node:assert/strict";

Deno.test("chat CLI through stdin", async () => {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "examples/chat.ts", "--model", "models/base", "--max-new-tokens", "10"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  });
  const child = cmd.spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode("Hi\n/system Be brief.\nHi\n/reset\nHi\n/quit\n"));
  await w.close();
  const { code, stdout, stderr } = await child.output();
  const out = new TextDecoder().decode(stdout);
  assert.equal(code, 0, new TextDecoder().decode(stderr));
  assert.match(out, /plain "User:\/Assistant:" format/);
  assert.match(out, /\(system prompt set\)/);
  assert.match(out, /\(conversation reset\)/);
  const replies = out.split("\n").filter((l) =>
    l.startsWith("> ") && !l.startsWith("> (") && l.length > 2
  ).map(
    (l) => l.slice(2),
  );
  assert.equal(replies.length, 3, out);
  assert.ok(replies[0].length > 0);
  // After /reset (the system prompt kept) the same question gets the same greedy reply.
  assert.equal(replies[2], replies[1]);
});

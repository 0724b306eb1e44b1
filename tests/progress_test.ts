import assert from "node:assert/strict";
import { formatDuration, Progress, ProgressError } from "../train/cli/progress.ts";
import { Rng } from "../core/rng.ts";

/** A settable clock and a sink that records every write. */
function harness() {
  const clock = { t: 0 };
  const writes: string[] = [];
  return { clock, writes, now: () => clock.t, out: (s: string) => void writes.push(s) };
}

// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x09\x0b-\x1f]/;

Deno.test("plain output: a line at the start, every 10% or 5 s, and at the end", () => {
  const { clock, writes, now, out } = harness();
  const p = new Progress({ total: 100, label: "train", out, now, isTty: false });
  const printedAt: Array<{ step: number; t: number }> = [];
  const rng = new Rng(crypto.getRandomValues(new Uint32Array(1))[0]);
  for (let k = 1; k <= 100; k++) {
    clock.t += 400 + 1200 * rng.float(); // uneven step times, 0.4-1.6 s
    const before = writes.length;
    p.update(k, { loss: 3 / k, tokensPerSec: 2500 });
    if (writes.length > before) printedAt.push({ step: k, t: clock.t });
  }
  p.done();
  const text = writes.join("");
  assert.doesNotMatch(text, CONTROL, "no \\r or escape codes in a log");
  const lines = text.trimEnd().split("\n");
  assert.equal(lines.length, printedAt.length, "done() adds nothing when the end was printed");
  assert.ok(lines.length <= 100 * 1.6 / 5 + 12, `${lines.length} lines is too chatty`);
  assert.equal(printedAt[0].step, 1);
  assert.equal(printedAt.at(-1)!.step, 100);
  for (let i = 1; i < printedAt.length; i++) {
    const a = printedAt[i - 1], b = printedAt[i];
    const crossed = Math.floor(b.step / 10) > Math.floor(a.step / 10);
    assert.ok(crossed || b.t - a.t >= 5000 || b.step === 100, `line at step ${b.step}`);
    // Never silent for much longer than the interval plus one step.
    assert.ok(b.t - a.t < 5000 + 1600 + 1e-9);
  }
  for (let d = 10; d <= 100; d += 10) {
    assert.ok(printedAt.some((x) => x.step === d), `the ${d}% line`);
  }
  assert.match(lines[0], /^train: step 1\/100 \(1%\) loss 3\.0000, 2\.5k tok\/s, elapsed /);
  assert.match(lines.at(-1)!, /step 100\/100 \(100%\) loss 0\.0300, .*ETA 0:00$/);
});

Deno.test("ETA comes from the mean rate since the start", () => {
  const { clock, writes, now, out } = harness();
  clock.t = 1_000_000; // the clock's origin does not matter
  const p = new Progress({ total: 100, out, now, isTty: false });
  assert.equal(p.etaMs, null);
  clock.t += 10_000;
  p.update(10, { loss: 2.5 });
  assert.equal(p.etaMs, 90_000); // 10 steps in 10 s, 90 left
  assert.match(writes.at(-1)!, /elapsed 0:10, ETA 1:30\n$/);
  clock.t += 40_000;
  p.update(25);
  assert.equal(p.etaMs, 150_000); // 25 steps in 50 s, 75 left
  assert.match(p.render(), /ETA 2:30$/);

  // A resumed run: the rate counts only the steps done since this display started.
  const r = new Progress({ total: 200, start: 150, out, now, isTty: false });
  clock.t += 20_000;
  r.update(160);
  assert.equal(r.etaMs, 80_000);
  assert.match(r.render(), /step 160\/200 \(80%\) elapsed 0:20, ETA 1:20$/);
  assert.equal(formatDuration(3_723_000), "1:02:03");
  assert.equal(formatDuration(59_400), "0:59");
});

Deno.test("terminal output redraws one line, throttled, and ends it on done()", () => {
  const { clock, writes, now, out } = harness();
  const p = new Progress({ total: 40, label: "ft", out, now, isTty: true, columns: 200 });
  for (let k = 1; k <= 40; k++) {
    clock.t += 30; // faster than the 100 ms redraw interval
    p.update(k, { loss: 1 / k, tokensPerSec: 1_234_567 });
  }
  assert.ok(writes.length >= 10 && writes.length <= 16, `${writes.length} redraws`);
  for (const w of writes) {
    assert.ok(w.startsWith("\r\x1b[2K"), JSON.stringify(w));
    assert.ok(!w.includes("\n"));
  }
  assert.ok(writes.at(-1)!.includes(" 40/40 100% "), "the last state is always drawn");
  assert.ok(writes.at(-1)!.includes("│████████████████████│"));
  const n = writes.length;
  p.done("finished");
  assert.equal(writes.length, n + 2, "the final state was drawn already");
  assert.deepEqual(writes.slice(-2), ["\n", "finished\n"]);
  assert.ok(writes.at(-3)!.startsWith("\r\x1b[2Kft │") && writes.at(-3)!.endsWith("ETA 0:00"));
  p.done(); // idempotent
  assert.throws(() => p.update(40), ProgressError);
});

Deno.test("terminal: done() draws a state that a throttled update skipped", () => {
  const { clock, writes, now, out } = harness();
  const p = new Progress({ total: 10, out, now, isTty: true, columns: 200 });
  clock.t = 1000;
  p.update(1, { loss: 1 });
  clock.t = 1010;
  p.update(2, { loss: 0.5 });
  assert.equal(writes.length, 1);
  p.done();
  assert.equal(writes.length, 3);
  assert.ok(writes[1].includes(" 2/10 ") && writes[1].includes("loss 0.5000"), writes[1]);
  assert.equal(writes[2], "\n");
});

Deno.test("terminal bar fills in proportion, lines fit the width, log() keeps the bar", () => {
  const { clock, writes, now, out } = harness();
  const p = new Progress({ total: 8, label: "eval", out, now, isTty: true, columns: 60 });
  clock.t = 5000;
  p.update(4, { loss: 0.5 });
  const line = writes.at(-1)!.slice("\r\x1b[2K".length);
  assert.ok(line.length < 60, line);
  assert.ok(line.startsWith("eval │██████████          │ 4/8  50% loss 0.5000"), line);
  clock.t = 5100;
  p.update(5);
  assert.ok(writes.at(-1)!.includes("│████████████▌       │"), writes.at(-1));
  const n = writes.length;
  p.log("checkpoint saved");
  assert.equal(writes[n], "\r\x1b[2Kcheckpoint saved\n");
  assert.ok(writes[n + 1].startsWith("\r\x1b[2Keval │"), "the bar comes back under the message");
  // Too narrow: elapsed goes first, then tokens/s, then the label; then the line is cut.
  const drawn = (columns: number, label = "finetune hd-pissa") => {
    const q = new Progress({ total: 30, label, out, now, isTty: true, columns });
    clock.t += 3000;
    q.update(3, { loss: 2, tokensPerSec: 900 });
    return writes.at(-1)!.slice("\r\x1b[2K".length);
  };
  const full = drawn(200);
  assert.match(
    full,
    /^finetune hd-pissa │.*│ {2}3\/30 {2}10% loss 2\.0000 900 tok\/s elapsed 0:03 ETA/,
  );
  const noElapsed = drawn(full.length);
  assert.ok(!noElapsed.includes("elapsed") && noElapsed.includes("900 tok/s"), noElapsed);
  const noRate = drawn(noElapsed.length);
  assert.ok(!noRate.includes("tok/s") && noRate.startsWith("finetune"), noRate);
  const noLabel = drawn(noRate.length);
  assert.ok(noLabel.startsWith("│") && noLabel.endsWith("ETA 0:27"), noLabel);
  assert.equal(drawn(25).length, 24);
  assert.ok(drawn(50, "x".repeat(100)).length < 50);
});

Deno.test("a byte writer gets every byte even when it writes a few at a time", () => {
  const chunks: Uint8Array[] = [];
  const writer = {
    writeSync(p: Uint8Array): number {
      const n = Math.min(5, p.length);
      chunks.push(p.slice(0, n));
      return n;
    },
  };
  const clock = { t: 0 };
  const p = new Progress({ total: 2, label: "ü", out: writer, now: () => clock.t, isTty: false });
  clock.t = 1000;
  p.update(1, { loss: 1.25 });
  p.done("bye ✓");
  const bytes = new Uint8Array(chunks.reduce((a, c) => a + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    bytes.set(c, off);
    off += c.length;
  }
  const text = new TextDecoder().decode(bytes);
  assert.equal(
    text,
    "ü: step 1/2 (50%) loss 1.2500, elapsed 0:01, ETA 0:01\nbye ✓\n",
  );
});

Deno.test("bad arguments are refused with a ProgressError", () => {
  const out = () => {};
  for (const total of [0, -3, 2.5, NaN]) {
    assert.throws(() => new Progress({ total, out }), ProgressError);
  }
  assert.throws(() => new Progress({ total: 5, start: 6, out }), ProgressError);
  const p = new Progress({ total: 5, out, isTty: false });
  for (const k of [-1, 6, 1.5, NaN]) assert.throws(() => p.update(k), ProgressError);
  p.update(5, { loss: NaN, tokensPerSec: Infinity });
  assert.match(p.render(), /loss nan, - tok\/s/);
});

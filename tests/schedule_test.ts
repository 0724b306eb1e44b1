import assert from "node:assert/strict";
import {
  learningRate,
  learningRates,
  parseSchedule,
  ScheduleError,
  warmupSteps,
} from "../train/optim/schedule.ts";

const close = (a: number, b: number) =>
  assert.ok(Math.abs(a - b) <= 1e-12 * Math.max(1, Math.abs(b)), `${a} != ${b}`);

Deno.test("warmup length is ceil(ratio · T)", () => {
  assert.equal(warmupSteps(0, 10), 0);
  assert.equal(warmupSteps(0.2, 10), 2);
  assert.equal(warmupSteps(0.25, 10), 3); // 2.5 rounds up
  assert.equal(warmupSteps(0.01, 10), 1);
  assert.equal(warmupSteps(1, 7), 7);
});

Deno.test("hand-computed values, T = 10, warmup 0.2 (w = 2), lr0 = 1", () => {
  const at = (schedule: "cosine" | "linear" | "constant", t: number) =>
    learningRate(t, { schedule, lr: 1, warmupRatio: 0.2, totalSteps: 10 });
  for (const s of ["cosine", "linear", "constant"] as const) {
    close(at(s, 0), 0); // step 0 of a warmup has lr 0
    close(at(s, 1), 0.5);
    close(at(s, 2), 1);
  }
  // cosine: 0.5 (1 + cos(π (t − 2) / 8))
  close(at("cosine", 4), 0.5 * (1 + Math.SQRT1_2));
  close(at("cosine", 6), 0.5);
  close(at("cosine", 9), 0.5 * (1 + Math.cos(7 * Math.PI / 8)));
  close(at("cosine", 10), 0);
  // linear: (10 − t) / 8
  close(at("linear", 6), 0.5);
  close(at("linear", 9), 0.125);
  close(at("linear", 10), 0);
  close(at("constant", 9), 1);
});

Deno.test("no warmup starts at lr0; lr0 scales every value", () => {
  const cfg = { lr: 3e-4, warmupRatio: 0, totalSteps: 100 };
  close(learningRate(0, { ...cfg, schedule: "cosine" }), 3e-4);
  close(learningRate(0, { ...cfg, schedule: "linear" }), 3e-4);
  // cosine at (t − w)/(T − w) = 1/3: 0.5 (1 + cos(π/3)) = 0.75
  close(learningRate(10, { ...cfg, warmupRatio: 0.1, schedule: "cosine" }), 3e-4);
  close(learningRate(40, { ...cfg, warmupRatio: 0.1, schedule: "cosine" }), 2.25e-4);
  // T = 1: a single step at lr0
  close(learningRate(0, { lr: 2, warmupRatio: 0, totalSteps: 1, schedule: "linear" }), 2);
});

Deno.test("all-warmup schedule and the whole-run array", () => {
  const lrs = learningRates({ schedule: "cosine", lr: 1, warmupRatio: 1, totalSteps: 4 });
  assert.deepEqual(Array.from(lrs), [0, 0.25, 0.5, 0.75]);
  const lin = learningRates({ schedule: "linear", lr: 1, warmupRatio: 0, totalSteps: 4 });
  assert.deepEqual(Array.from(lin), [1, 0.75, 0.5, 0.25]);
});

Deno.test("unknown schedules and bad settings are typed errors", () => {
  assert.equal(parseSchedule("linear"), "linear");
  assert.throws(
    () => parseSchedule("step"),
    (e: unknown) => e instanceof ScheduleError && /cosine, linear, constant/.test(e.message),
  );
  const base = { lr: 1, warmupRatio: 0.1, totalSteps: 10 };
  assert.throws(() => learningRate(0, { ...base, schedule: "exp" as "cosine" }), ScheduleError);
  assert.throws(() => learningRate(11, { ...base, schedule: "cosine" }), ScheduleError);
  assert.throws(() => learningRate(-1, { ...base, schedule: "cosine" }), ScheduleError);
  assert.throws(
    () => learningRate(0, { ...base, totalSteps: 0, schedule: "cosine" }),
    ScheduleError,
  );
  assert.throws(
    () => learningRate(0, { ...base, warmupRatio: 1.5, schedule: "cosine" }),
    ScheduleError,
  );
  assert.throws(() => learningRate(0, { ...base, lr: NaN, schedule: "cosine" }), ScheduleError);
});

// The engine: device and limits, pool and caches, one-submit recording with reads in stream
// order, timestamp timing, typed errors (released/foreign tensors, closed engine, validation
// errors, device loss).
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { openDevice } from "../gpu/device.ts";
import {
  DeviceLostError,
  GpuClosedError,
  GpuShapeError,
  GpuValidationError,
  NoAdapterError,
} from "../gpu/errors.ts";
import { defineKernel } from "../gpu/kernel.ts";
import { accumulate, add, fill, scale } from "../gpu/kernels/elementwise.ts";
import { matmul } from "../gpu/kernels/matmul.ts";
import { Rng } from "../core/rng.ts";

Deno.test("gpu engine", async (t) => {
  const gpu = await Gpu.open();
  const rng = new Rng(1);
  try {
    await t.step("device: adapter limits requested, info consistent", () => {
      assert.ok(Deno.env.get("XDG_RUNTIME_DIR"));
      assert.equal(
        gpu.device.limits.maxStorageBufferBindingSize,
        gpu.adapter.limits.maxStorageBufferBindingSize,
      );
      assert.equal(gpu.device.limits.maxBufferSize, gpu.adapter.limits.maxBufferSize);
      assert.equal(gpu.info.timestamps, gpu.adapter.features.has("timestamp-query"));
      assert.equal(gpu.matmulVariant, gpu.info.isCpu ? "register" : "tiled");
      console.log(
        `adapter: ${gpu.info.description} (fallback ${gpu.info.isFallback}, timestamps ${gpu.info.timestamps})`,
      );
    });

    await t.step(
      "--device: auto announces a CPU adapter, gpu refuses one, cpu asks for one",
      async () => {
        const auto = await openDevice({ adapter: "auto" });
        const cpu = await openDevice({ adapter: "cpu" });
        try {
          assert.ok(cpu.info.isCpu, `cpu gave ${cpu.info.description}`);
          assert.equal(cpu.info.fallback, null, "a CPU adapter that was asked for is no fallback");
          if (auto.info.isCpu) {
            // No GPU here: auto ran on the CPU adapter and must say so; gpu must refuse.
            assert.match(auto.info.fallback ?? "", /CPU|no GPU|failed/);
            await assert.rejects(
              openDevice({ adapter: "gpu" }),
              (e: unknown) => e instanceof NoAdapterError && /Vulkan driver/.test(e.message),
            );
          } else {
            assert.equal(auto.info.fallback, null);
            const g = await openDevice({ adapter: "gpu" });
            assert.equal(g.info.isCpu, false);
            g.device.destroy();
          }
        } finally {
          auto.device.destroy();
          cpu.device.destroy();
        }
      },
    );

    await t.step("pool reuses released buffers; caches hit on repeated steps", async () => {
      const x = gpu.upload(rng.normals(1000));
      const y = gpu.tensor([1000]);
      const step = () => gpu.run((rec) => add(rec, y, x, x), [y]);
      await step();
      const before = gpu.stats();
      await step();
      await step();
      const after = gpu.stats();
      assert.equal(after.pipelines, before.pipelines);
      assert.equal(after.bindGroups, before.bindGroups);
      assert.equal(after.created, before.created, "staging buffers come from the pool");
      // A step spanning several uniform-arena chunks hits the cache on the next step too.
      const y2 = gpu.tensor([1000]);
      const many = () =>
        gpu.run((rec) => {
          for (let i = 0; i < 5000; i++) add(rec, i < 2500 ? y : y2, x, x);
        });
      await many();
      const groups = gpu.stats().bindGroups;
      await many();
      assert.equal(gpu.stats().bindGroups, groups);
      const z = gpu.tensor([999]);
      const buf = z.buffer;
      gpu.release(z);
      const z2 = gpu.tensor([1000]);
      assert.equal(z2.buffer, buf, "same size class, same buffer");
      for (const q of [x, y, y2, z2]) gpu.release(q);
    });

    await t.step("one submit: reads see the stream order; hundreds of dispatches", async () => {
      const acc = gpu.zeros([7]);
      const one = gpu.upload(new Float32Array(7).fill(1));
      const rec = gpu.record();
      const early = rec.read(acc);
      for (let i = 0; i < 600; i++) accumulate(rec, acc, one);
      const mid = rec.read(acc);
      scale(rec, acc, acc, 0.5);
      const res = await rec.submit();
      assert.equal(res.dispatches, 601);
      assert.deepEqual(Array.from(await early), new Array(7).fill(0));
      assert.deepEqual(Array.from(await mid), new Array(7).fill(600));
      assert.deepEqual(Array.from(await gpu.read(acc)), new Array(7).fill(300));
      gpu.release(acc);
      gpu.release(one);
    });

    await t.step("1-D kernels fold grids beyond 65535 workgroups", async () => {
      const n = 65535 * 256 + 300;
      const big = gpu.tensor([n]);
      const [v] = await gpu.run((rec) => fill(rec, big, 3), [big]);
      assert.equal(v.length, n);
      assert.ok(v[0] === 3 && v[65535 * 256] === 3 && v[n - 1] === 3);
      assert.ok(v.every((x) => x === 3));
      gpu.release(big);
    });

    await t.step("timing: timestamp sections when available, wall clock always", async () => {
      const a = gpu.upload(rng.normals(64 * 64), [64, 64]), c = gpu.tensor([64, 64]);
      const rec = gpu.record({ profile: true });
      matmul(rec, "NT", c, a, a);
      fill(rec, c, 1);
      rec.timed("pair", () => {
        matmul(rec, "NN", c, a, a);
        matmul(rec, "TN", c, a, a);
      });
      const res = await rec.submit();
      assert.ok(res.wallMs > 0);
      if (gpu.info.timestamps) {
        assert.deepEqual(res.sections.map((s) => s.label.replace(/_.*/, "")), [
          "matmul",
          "fill",
          "pair",
        ]);
        assert.ok(res.sections.every((s) => s.ms >= 0 && Number.isFinite(s.ms)));
        assert.ok(res.gpuMs !== null && res.gpuMs >= 0);
      } else {
        assert.equal(res.gpuMs, null);
      }
      gpu.release(a);
      gpu.release(c);
    });

    await t.step("typed errors for misuse", async () => {
      const x = gpu.upload(new Float32Array(64));
      assert.throws(() => gpu.write(x, new Float32Array(63)), GpuShapeError);
      assert.throws(() => gpu.write(x, new Int32Array(64)), GpuShapeError);
      assert.throws(() => gpu.tensor([0, 3]), GpuShapeError);
      assert.throws(() => gpu.tensor([1.5]), GpuShapeError);
      assert.throws(
        () => gpu.tensor([gpu.limits.maxStorageBufferBindingSize]),
        /maxStorageBufferBindingSize/,
      );
      assert.throws(() => x.view([65]), GpuShapeError);
      assert.throws(() => x.rows(60, 5), GpuShapeError);
      const rec = gpu.record();
      // A view starting 4 bytes in is not aligned for a storage binding.
      assert.throws(() => fill(rec, x.rows(1, 3), 0), /minStorageBufferOffsetAlignment/);
      const aligned = gpu.limits.minStorageBufferOffsetAlignment / 4;
      fill(rec, x.rows(aligned, 64 - aligned), 2);
      const dead = gpu.tensor([4]);
      gpu.release(dead);
      assert.throws(() => fill(rec, dead, 0), GpuClosedError);
      assert.throws(() => gpu.release(dead), GpuClosedError);
      const other = await Gpu.open();
      try {
        assert.throws(() => fill(rec, other.tensor([4]), 0), /another engine/);
      } finally {
        other.close();
      }
      await rec.submit();
      await assert.rejects(rec.submit(), GpuClosedError);
      assert.throws(() => fill(rec, x, 0), GpuClosedError);
      const v = await gpu.read(x);
      assert.equal(v[aligned - 1], 0);
      assert.equal(v[aligned], 2);
      const r2 = gpu.record();
      const pending = r2.read(x);
      r2.discard();
      await assert.rejects(pending, GpuClosedError);
      gpu.release(x);
    });
  } finally {
    gpu.close();
  }
  assert.throws(() => gpu.tensor([1]), GpuClosedError);
  gpu.close();
});

Deno.test("gpu engine: a WGSL error surfaces as GpuValidationError", async () => {
  const gpu = await Gpu.open();
  try {
    const broken = defineKernel({
      name: "broken",
      params: { n: "u32" },
      bindings: { x: "read_write f32" },
      body: "@compute @workgroup_size(1) fn main() { x[0] = undefined_name; }",
    });
    const x = gpu.tensor([4]);
    const rec = gpu.record();
    rec.dispatch(broken, { bindings: { x }, params: { n: 4 }, grid: [1] });
    await assert.rejects(rec.submit(), GpuValidationError);
  } finally {
    gpu.close();
  }
});

Deno.test("gpu engine: device loss gives DeviceLostError", async () => {
  const gpu = await Gpu.open();
  try {
    const x = gpu.tensor([4]);
    gpu.device.destroy();
    await assert.rejects(gpu.sync(), DeviceLostError);
    assert.throws(() => gpu.record(), DeviceLostError);
    assert.throws(() => gpu.write(x, new Float32Array(4)), DeviceLostError);
  } finally {
    gpu.close();
  }
});

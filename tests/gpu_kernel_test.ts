// Kernel declarations: the generated WGSL header, declaration checks, dispatch by name with
// typed errors for missing / unknown / mistyped arguments (at compile time where TypeScript can
// see them, at run time always), optional bindings, and the pipeline cache generating each
// variant once.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError, KernelArgumentError } from "../gpu/errors.ts";
import {
  defineKernel,
  defineKernelVariants,
  kernelHeader,
  kernelInterface,
  kernelSource,
} from "../gpu/kernel.ts";

const body = (line: string) => /* wgsl */ `
@compute @workgroup_size(1)
fn main() {
  ${line}
}
`;

Deno.test("kernel header: generated from the declaration, in declaration order", () => {
  const decl = {
    name: "h",
    params: { n: "u32", shift: "i32", alpha: "f32" },
    bindings: { out: "read_write f32", ids: "read i32", v: "read vec4<f32>", y: "read f32?" },
    body: body("out[0] = p.alpha;"),
  } as const;
  const expected = [
    "struct Params {",
    "  n: u32,",
    "  shift: i32,",
    "  alpha: f32,",
    "}",
    "@group(0) @binding(0) var<uniform> p: Params;",
    "@group(0) @binding(1) var<storage, read_write> out: array<f32>;",
    "@group(0) @binding(2) var<storage, read> ids: array<i32>;",
    "@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;",
    "@group(0) @binding(4) var<storage, read> y: array<f32>;",
    "",
  ].join("\n");
  assert.equal(kernelSource(decl), expected + decl.body);
  // Deterministic: the same declaration, built again, gives the same source.
  assert.equal(kernelSource({ ...decl, params: { ...decl.params } }), kernelSource(decl));
  // Order is part of the interface: swapping two parameters changes the struct.
  const swapped = { ...decl, params: { shift: "i32", n: "u32", alpha: "f32" } } as const;
  assert.notEqual(kernelSource(swapped), kernelSource(decl));

  const iface = kernelInterface(decl);
  assert.equal(iface.paramBytes, 16);
  assert.deepEqual(iface.bindings.map((b) => [b.name, b.binding, b.dtype, b.optional]), [
    ["out", 1, "f32", false],
    ["ids", 2, "i32", false],
    ["v", 3, "f32", false],
    ["y", 4, "f32", true],
  ]);
  // The optional read binding y stands in with the first required read binding, ids.
  assert.equal(iface.bindings[3].standIn, 1);
  assert.equal(
    kernelInterface({ ...decl, params: { a: "u32", b: "u32", c: "u32", d: "u32", e: "f32" } })
      .paramBytes,
    32,
  );
  // WGSL has no empty structs.
  assert.match(kernelHeader([], []), /struct Params \{\n {2}pad: u32,\n\}/);
});

Deno.test("kernel declaration: bad names and types fail when the kernel is defined", () => {
  const ok = {
    name: "d",
    params: { n: "u32" },
    bindings: { x: "read_write f32" },
    body: "",
  } as const;
  assert.doesNotThrow(() => defineKernel(ok));
  const bad: [string, () => unknown][] = [
    ["binding named p", () => defineKernel({ ...ok, bindings: { p: "read_write f32" } })],
    ["binding named Params", () => defineKernel({ ...ok, bindings: { Params: "read f32" } })],
    ["not an identifier", () => defineKernel({ ...ok, bindings: { "a-b": "read f32" } })],
    ["parameter not an identifier", () => defineKernel({ ...ok, params: { "1n": "u32" } })],
    // Types a caller bypassing the checker could pass.
    ["u64 parameter", () => defineKernel({ ...ok, params: { n: "u64" as never } })],
    ["write access", () => defineKernel({ ...ok, bindings: { x: "write f32" as never } })],
    ["f64 element", () => defineKernel({ ...ok, bindings: { x: "read f64" as never } })],
    // An optional binding needs a required binding of the same access to stand in for it.
    [
      "optional without stand-in",
      () => defineKernel({ ...ok, bindings: { x: "read_write f32", y: "read f32?" } }),
    ],
  ];
  for (const [what, f] of bad) assert.throws(f, GpuShapeError, what);
});

// y = alpha·x (+ z when given), writing the parameters of every type to `echo`.
const AXPZ = defineKernel({
  name: "test_axpz",
  params: { n: "u32", shift: "i32", alpha: "f32", hasZ: "u32" },
  bindings: {
    y: "read_write f32",
    echo: "read_write i32",
    x: "read f32",
    z: "read f32?",
  },
  body: /* wgsl */ `
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i == 0u) {
    echo[0] = i32(p.n);
    echo[1] = p.shift;
    echo[2] = bitcast<i32>(p.alpha);
    echo[3] = i32(p.hasZ);
  }
  if (i >= p.n) { return; }
  var v = p.alpha * x[i];
  if (p.hasZ != 0u) { v = v + z[i]; }
  y[i] = v;
}
`,
});

Deno.test("kernel dispatch: by name, with typed errors for wrong arguments", async (t) => {
  const gpu = await Gpu.open();
  try {
    const n = 100;
    const xs = Float32Array.from({ length: n }, (_, i) => i - 50);
    const zs = Float32Array.from({ length: n }, (_, i) => 0.25 * i);
    const x = gpu.upload(xs), z = gpu.upload(zs);
    const y = gpu.tensor([n]), echo = gpu.tensor([4], "i32");
    const ids = gpu.tensor([n], "i32");
    const grid = [2] as const;
    const params = { n, shift: -7, alpha: 1.5, hasZ: 1 };

    await t.step(
      "parameters land in their fields; an optional binding may be left out",
      async () => {
        const [out, e] = await gpu.run((rec) => {
          rec.dispatch(AXPZ, { bindings: { y, echo, x, z }, params, grid });
        }, [y, echo]);
        assert.deepEqual(Array.from(out), Array.from(xs, (v, i) => 1.5 * v + zs[i]));
        const alphaBits = new Int32Array(new Float32Array([1.5]).buffer)[0];
        assert.deepEqual(Array.from(e), [n, -7, alphaBits, 1]);
        for (const absent of [{}, { z: null }]) {
          const [out2] = await gpu.run((rec) => {
            rec.dispatch(AXPZ, {
              bindings: { y, echo, x, ...absent },
              params: { ...params, alpha: -2, hasZ: 0 },
              grid,
            });
          }, [y]);
          assert.deepEqual(Array.from(out2), Array.from(xs, (v) => -2 * v));
        }
      },
    );

    await t.step("missing, unknown and mistyped arguments throw KernelArgumentError", async () => {
      const rec = gpu.record();
      const fails = (
        f: () => void,
        argument: string,
        reason: KernelArgumentError["reason"],
        message: RegExp,
      ) =>
        assert.throws(f, (e: unknown) => {
          assert.ok(e instanceof KernelArgumentError, String(e));
          assert.ok(e instanceof GpuShapeError);
          assert.equal(e.kernel, "test_axpz");
          assert.equal(e.argument, argument);
          assert.equal(e.reason, reason);
          assert.match(e.message, message);
          return true;
        });
      // Missing binding (a required one; the checker catches the omission too).
      fails(
        // @ts-expect-error x is required
        () => rec.dispatch(AXPZ, { bindings: { y, echo }, params, grid }),
        "x",
        "missing",
        /binding 'x' missing/,
      );
      // Required binding passed as null.
      fails(
        // @ts-expect-error x may not be null
        () => rec.dispatch(AXPZ, { bindings: { y, echo, x: null }, params, grid }),
        "x",
        "missing",
        /binding 'x' missing/,
      );
      // Misspelt binding name.
      fails(
        // @ts-expect-error no binding named xx
        () => rec.dispatch(AXPZ, { bindings: { y, echo, x, xx: z }, params, grid }),
        "xx",
        "unknown",
        /no binding named 'xx' \(bindings: y, echo, x, z\)/,
      );
      // Wrong dtype: an i32 tensor for an f32 binding, and the other way round.
      fails(
        () => rec.dispatch(AXPZ, { bindings: { y, echo, x: ids }, params, grid }),
        "x",
        "dtype",
        /array<f32> and needs a f32 tensor, got .*i32\[100\]/,
      );
      fails(
        () => rec.dispatch(AXPZ, { bindings: { y, echo: y, x }, params, grid }),
        "echo",
        "dtype",
        /array<i32> and needs a i32 tensor/,
      );
      // Unknown parameter.
      fails(
        () =>
          rec.dispatch(AXPZ, {
            bindings: { y, echo, x },
            // @ts-expect-error no parameter named beta
            params: { ...params, beta: 1 },
            grid,
          }),
        "beta",
        "unknown",
        /no parameter named 'beta' \(parameters: n, shift, alpha, hasZ\)/,
      );
      // Missing parameter.
      fails(
        () =>
          rec.dispatch(AXPZ, {
            bindings: { y, echo, x },
            // @ts-expect-error alpha is required
            params: { n, shift: 0, hasZ: 0 },
            grid,
          }),
        "alpha",
        "missing",
        /parameter 'alpha' missing/,
      );
      // Parameters of the wrong type: not a u32, not an i32, not a number.
      const wrong: [string, number | string, RegExp][] = [
        ["n", -1, /n = -1 is not a u32/],
        ["n", 2.5, /n = 2.5 is not a u32/],
        ["n", 2 ** 32, /is not a u32/],
        ["shift", 2 ** 31, /is not an i32/],
        ["shift", NaN, /shift = NaN is not an i32/],
        ["alpha", "1", /alpha = 1 is not a number \(f32\)/],
      ];
      for (const [name, v, message] of wrong) {
        const bad = { ...params, [name]: v } as typeof params;
        fails(
          () => rec.dispatch(AXPZ, { bindings: { y, echo, x }, params: bad, grid }),
          name,
          "dtype",
          message,
        );
      }
      // A failed dispatch records nothing; the recorder stays usable.
      assert.equal(rec.dispatches, 0);
      rec.dispatch(AXPZ, { bindings: { y, echo, x }, params: { ...params, hasZ: 0 }, grid });
      assert.equal(rec.dispatches, 1);
      await rec.submit();
    });

    await t.step("a vec4 binding needs whole 16-byte vectors", () => {
      const V4 = defineKernel({
        name: "test_vec4",
        params: { n: "u32" },
        bindings: { y: "read_write f32", v: "read vec4<f32>" },
        body: body("y[0] = v[0].x;"),
      });
      const rec = gpu.record();
      const odd = gpu.tensor([6]);
      assert.throws(
        () => rec.dispatch(V4, { bindings: { y, v: odd }, params: { n: 1 }, grid: [1] }),
        /array<vec4<f32>>/,
      );
      rec.dispatch(V4, { bindings: { y, v: x.view([25, 4]) }, params: { n: 1 }, grid: [1] });
      rec.discard();
      gpu.release(odd);
    });

    for (const q of [x, z, y, echo, ids]) gpu.release(q);
  } finally {
    gpu.close();
  }
});

Deno.test("pipeline cache: one variant generated once, one source compiled once", async () => {
  const gpu = await Gpu.open();
  try {
    let made = 0;
    const FILLK = defineKernelVariants((c: { value: number }) => {
      made++;
      return {
        name: `test_fill_${c.value}`,
        params: { n: "u32" },
        bindings: { y: "read_write f32" },
        body: /* wgsl */ `
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x < p.n) { y[gid.x] = ${c.value.toFixed(1)}; }
}
`,
      };
    });
    const y = gpu.tensor([10]);
    const fill = (value: number) =>
      gpu.run((rec) => {
        rec.dispatch(FILLK.variant({ value }), {
          bindings: { y },
          params: { n: 10 },
          grid: [1],
        });
      }, [y]);
    const before = gpu.stats().pipelines;
    assert.deepEqual(Array.from((await fill(3))[0]), new Array(10).fill(3));
    assert.deepEqual(Array.from((await fill(3))[0]), new Array(10).fill(3));
    assert.equal(made, 1, "a variant seen again is not generated again");
    assert.deepEqual(Array.from((await fill(4))[0]), new Array(10).fill(4));
    assert.equal(made, 2);
    assert.equal(gpu.stats().pipelines, before + 2);
    // Another declaration generating the same source shares the pipeline.
    const SAME = defineKernel(FILLK.make({ value: 4 }));
    await gpu.run((rec) => rec.dispatch(SAME, { bindings: { y }, params: { n: 10 }, grid: [1] }));
    assert.equal(gpu.stats().pipelines, before + 2);
    gpu.release(y);
  } finally {
    gpu.close();
  }
});

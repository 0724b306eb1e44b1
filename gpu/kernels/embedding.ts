/**
 * Token embedding: gather forward, and a deterministic backward without atomics.
 *
 * The backward pass needs, for every distinct token, the positions where it occurs. The host
 * knows the tokens (it uploaded them), so `EmbeddingGradPlan.set` sorts the positions by token
 * once per step (a stable counting sort); the kernel then gives each distinct token one
 * workgroup row that sums its positions' gradient rows in ascending position order. An
 * invocation loops over one token's positions: `maxRun + 1` loop passes, maxRun being the
 * largest count of one token in the batch (at most the batch's token count), so a batch may
 * repeat one token up to 65,534 times (see `MAX_INVOCATION_LOOP`).
 *
 * The forward reads the table through its generated accessor (`table_at`, gpu/kernel.ts), so a
 * frozen bf16/f16 table (two elements per word) gathers its exact f32 values with the same
 * kernel body; the backward writes an f32 gradient table, as gradients are always f32.
 * @module
 */
import type { Gpu } from "../engine.ts";
import { GpuShapeError } from "../errors.ts";
import { defineKernel, defineKernelVariants } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { expect2d, expectShape, type GpuTensor, type RowParts } from "../tensor.ts";
import { fill } from "./elementwise.ts";
import { FLAT_INDEX_WGSL, grid1d, NAN_WGSL } from "./grid.ts";

const WG = 256;

type TableType = "f32" | "bf16" | "f16";

const FORWARD = defineKernelVariants((t: TableType) => ({
  name: t === "f32" ? "embedding_forward" : `embedding_forward_${t}`,
  params: { T: "u32", H: "u32", V: "u32", row0: "i32", part: "u32" },
  bindings: { y: "read_write f32", table: `read ${t}`, tokens: "read i32" },
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
${NAN_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatIndex(gid, nwg, ${WG}u);
  if (i >= p.T * p.H) { return; }
  let tok = tokens[i / p.H] - p.row0;
  // A part of a row-split table leaves the rows of the other parts alone.
  if (tok < 0 || u32(tok) >= p.V) { if (p.part == 0u) { y[i] = nanF32(); } return; }
  y[i] = table_at(u32(tok) * p.H + i % p.H);
}
`,
} as const), (t) => t);

/** The table's [V, H] and element type; throws GpuShapeError unless a 2-D float tensor. */
function tableShape(what: string, t: GpuTensor): [number, number, TableType] {
  if (t.shape.length !== 2 || t.dtype === "i32") {
    throw new GpuShapeError(`${what}: expected a 2-D float tensor, got ${t.describe()}`);
  }
  return [t.shape[0], t.shape[1], t.dtype];
}

const BWD_WG = 64;

const BACKWARD = defineKernel({
  name: "embedding_backward",
  params: { H: "u32", maxRun: "u32", u0: "u32", row0: "u32" },
  bindings: {
    dtable: "read_write f32",
    dy: "read f32",
    order: "read i32",
    starts: "read i32",
    ids: "read i32",
  },
  loopBound: ({ maxRun }) => maxRun + 1,
  body: /* wgsl */ `
@compute @workgroup_size(${BWD_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let u = wid.y + p.u0;
  let h = wid.x * ${BWD_WG}u + lid.x;
  if (h >= p.H) { return; }
  var s = 0.0;
  let begin = u32(starts[u]);
  // No token occurs more than maxRun times (the plan counted them).
  let end = min(u32(starts[u + 1u]), begin + p.maxRun);
  for (var n = begin; n < end; n++) {
    s += dy[u32(order[n]) * p.H + h];
  }
  let o = (u32(ids[u]) - p.row0) * p.H + h;
  dtable[o] = dtable[o] + s;
}
`,
});

/**
 * `y[t,:] = table[tokens[t],:]`. Shapes: y [T, H], table [V, H], tokens i32 [T]. An id outside
 * [0, V) gives a NaN row (a kernel cannot throw).
 */
export function embeddingForward(
  rec: Recorder,
  y: GpuTensor,
  table: GpuTensor,
  tokens: GpuTensor,
): void {
  const [V, H, type] = tableShape("embedding table", table);
  const [T] = tokens.shape;
  expectShape("embedding tokens", tokens, [T], "i32");
  expectShape("embedding y", y, [T, H]);
  rec.dispatch(FORWARD.variant(type), {
    bindings: { y, table, tokens },
    params: { T, H, V, row0: 0, part: 0 },
    grid: grid1d(T * H, WG),
  });
}

/**
 * `embeddingForward` from a table split by rows: every part writes the rows of its tokens (an
 * id outside every part gives a NaN row, as the whole table does).
 */
export function embeddingForwardParts(
  rec: Recorder,
  y: GpuTensor,
  table: RowParts,
  tokens: GpuTensor,
): void {
  if (table.parts.length === 1) return embeddingForward(rec, y, table.parts[0], tokens);
  const H = table.cols;
  const [T] = tokens.shape;
  expectShape("embedding tokens", tokens, [T], "i32");
  expectShape("embedding y", y, [T, H]);
  fill(rec, y, NaN);
  table.parts.forEach((part, i) => {
    const [V, , type] = tableShape("embedding table part", part);
    expectShape("embedding table part", part, [table.counts[i], H], type);
    rec.dispatch(FORWARD.variant(type), {
      bindings: { y, table: part, tokens },
      params: { T, H, V, row0: table.starts[i], part: 1 },
      grid: grid1d(T * H, WG),
    });
  });
}

/**
 * The positions of each distinct token of a batch, on the device: `order` lists positions
 * grouped by token (ascending token, ascending position), distinct token u owns
 * `order[starts[u] .. starts[u+1])`, and `ids[u]` is its token id. Allocate once with the
 * batch size as capacity; `set` refills it each step.
 */
export class EmbeddingGradPlan {
  readonly capacity: number;
  readonly vocab: number;
  readonly order: GpuTensor;
  readonly starts: GpuTensor;
  readonly ids: GpuTensor;
  #unique = 0;
  #hostIds = new Int32Array(0);
  #tokens = 0;
  #maxRun = 0;
  #gpu: Gpu;

  constructor(gpu: Gpu, capacity: number, vocab: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || !Number.isInteger(vocab) || vocab < 1) {
      throw new GpuShapeError(`EmbeddingGradPlan: bad capacity ${capacity} or vocab ${vocab}`);
    }
    this.#gpu = gpu;
    this.capacity = capacity;
    this.vocab = vocab;
    this.order = gpu.tensor([capacity], "i32", "embedding order");
    this.starts = gpu.tensor([capacity + 1], "i32", "embedding starts");
    this.ids = gpu.tensor([capacity], "i32", "embedding ids");
  }

  /** Distinct tokens of the last `set`. */
  get unique(): number {
    return this.#unique;
  }

  /** The distinct tokens u0 ≤ u < u1 of the last `set` whose ids lie in [lo, hi). */
  range(lo: number, hi: number): [number, number] {
    const ids = this.#hostIds;
    const lower = (x: number) => {
      let a = 0, b = ids.length;
      while (a < b) {
        const m = (a + b) >> 1;
        if (ids[m] < x) a = m + 1;
        else b = m;
      }
      return a;
    };
    return [lower(lo), lower(hi)];
  }

  /** Number of tokens of the last `set`. */
  get tokens(): number {
    return this.#tokens;
  }

  /** The most times one token occurs in the last `set`. */
  get maxRun(): number {
    return this.#maxRun;
  }

  /**
   * Computes the plan of `tokens` and writes it to the device (queue-ordered before the next
   * submit).
   * @throws GpuShapeError when there are more tokens than `capacity` or an id is outside the vocab.
   */
  set(tokens: Int32Array): void {
    const T = tokens.length;
    if (T < 1 || T > this.capacity) {
      throw new GpuShapeError(`EmbeddingGradPlan: ${T} tokens, capacity ${this.capacity}`);
    }
    const counts = new Int32Array(this.vocab);
    for (let t = 0; t < T; t++) {
      const v = tokens[t];
      if (!Number.isInteger(v) || v < 0 || v >= this.vocab) {
        throw new GpuShapeError(
          `EmbeddingGradPlan: token ${v} at position ${t} is outside [0, ${this.vocab})`,
        );
      }
      counts[v]++;
    }
    const first = new Int32Array(this.vocab);
    const ids = new Int32Array(this.capacity);
    const starts = new Int32Array(this.capacity + 1);
    let u = 0;
    let at = 0;
    let maxRun = 0;
    for (let v = 0; v < this.vocab; v++) {
      if (counts[v] === 0) continue;
      maxRun = Math.max(maxRun, counts[v]);
      ids[u] = v;
      starts[u] = at;
      first[v] = at;
      at += counts[v];
      u++;
    }
    starts[u] = at;
    const order = new Int32Array(this.capacity);
    for (let t = 0; t < T; t++) order[first[tokens[t]]++] = t;
    this.#unique = u;
    this.#hostIds = ids.slice(0, u);
    this.#tokens = T;
    this.#maxRun = maxRun;
    this.#gpu.write(this.order, order);
    this.#gpu.write(this.starts, starts);
    this.#gpu.write(this.ids, ids);
  }

  /** Releases the plan's device buffers. */
  release(): void {
    this.#gpu.release(this.order);
    this.#gpu.release(this.starts);
    this.#gpu.release(this.ids);
  }
}

/**
 * `dtable[v,:] (+)= Σ_{t: tokens[t] = v} dy[t,:]`, summed in ascending t; rows of tokens absent
 * from the batch are zeroed unless `accumulate`. Shapes: dtable [V, H], dy [T, H] with T the
 * token count of the plan's last `set`.
 * @throws KernelLoopBoundError when one token occurs more than 65,534 times in the batch.
 */
export function embeddingBackward(
  rec: Recorder,
  dtable: GpuTensor,
  dy: GpuTensor,
  plan: EmbeddingGradPlan,
  accumulate = false,
): void {
  const [V, H] = expect2d("embedding dtable", dtable);
  if (V !== plan.vocab) {
    throw new GpuShapeError(`embeddingBackward: dtable has ${V} rows, plan vocab ${plan.vocab}`);
  }
  if (plan.tokens === 0) throw new GpuShapeError("embeddingBackward: the plan was never set");
  expectShape("embedding dy", dy, [plan.tokens, H]);
  if (!accumulate) fill(rec, dtable, 0);
  rec.dispatch(BACKWARD, {
    bindings: { dtable, dy, order: plan.order, starts: plan.starts, ids: plan.ids },
    params: { H, maxRun: plan.maxRun, u0: 0, row0: 0 },
    grid: [Math.ceil(H / BWD_WG), plan.unique],
  });
}

/**
 * `embeddingBackward` into a gradient split by rows: each part gets the distinct tokens of its
 * rows (the plan's ids are sorted, so they are one run of the plan), summed in the same order as
 * the whole table.
 */
export function embeddingBackwardParts(
  rec: Recorder,
  dtable: RowParts,
  dy: GpuTensor,
  plan: EmbeddingGradPlan,
  accumulate = false,
): void {
  if (dtable.parts.length === 1) {
    return embeddingBackward(rec, dtable.parts[0], dy, plan, accumulate);
  }
  const H = dtable.cols;
  if (dtable.rows !== plan.vocab) {
    throw new GpuShapeError(
      `embeddingBackward: dtable has ${dtable.rows} rows, plan vocab ${plan.vocab}`,
    );
  }
  if (plan.tokens === 0) throw new GpuShapeError("embeddingBackward: the plan was never set");
  expectShape("embedding dy", dy, [plan.tokens, H]);
  dtable.parts.forEach((part, i) => {
    expectShape("embedding dtable part", part, [dtable.counts[i], H]);
    if (!accumulate) fill(rec, part, 0);
    const [u0, u1] = plan.range(dtable.starts[i], dtable.starts[i] + dtable.counts[i]);
    if (u1 === u0) return;
    rec.dispatch(BACKWARD, {
      bindings: { dtable: part, dy, order: plan.order, starts: plan.starts, ids: plan.ids },
      params: { H, maxRun: plan.maxRun, u0, row0: dtable.starts[i] },
      grid: [Math.ceil(H / BWD_WG), u1 - u0],
    });
  });
}

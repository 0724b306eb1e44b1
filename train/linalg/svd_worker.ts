/**
 * One thread of the SVD pool (`svd_pool.ts`): computes a range of rows of a product or of a
 * transpose, in shared memory, with the same kernels as the single-threaded path, so that the
 * bits do not depend on how the rows are split.
 * @module
 */
/// <reference lib="deno.worker" />
import { gemmNTRows, randomizedSvd, type Real, type SvdResult, transposeRows } from "./svd.ts";

/** A range of rows of one operation, on buffers shared with the main thread. */
export type SvdTask =
  | {
    id: number;
    op: "gemm";
    /** `P [rows, inner]` (float32 or float64), `R [cols, inner]` and `C [rows, cols]` (float64). */
    P: SharedArrayBuffer;
    f32: boolean;
    R: SharedArrayBuffer;
    C: SharedArrayBuffer;
    cols: number;
    inner: number;
    r0: number;
    r1: number;
  }
  | {
    id: number;
    op: "transpose";
    /** `A [m, n]` and `T [n, m]`, both float32 or both float64; rows j0..j1 of T. */
    A: SharedArrayBuffer;
    T: SharedArrayBuffer;
    f32: boolean;
    m: number;
    n: number;
    j0: number;
    j1: number;
  }
  | {
    id: number;
    op: "svd";
    /** A whole randomized SVD of `A [m, n]` on this thread (`randomizedSvd`, seeded). */
    A: SharedArrayBuffer;
    f32: boolean;
    m: number;
    n: number;
    rank: number;
    niter?: number;
    oversample?: number;
    seed?: number;
  };

/** The answer to a task: done (with the SVD of an "svd" task), or the error's message. */
export type SvdTaskReply =
  | { id: number; ok: true; svd?: SvdResult }
  | { id: number; ok: false; error: string };

const view = (b: SharedArrayBuffer, f32: boolean): Real =>
  f32 ? new Float32Array(b) : new Float64Array(b);

self.onmessage = (e: MessageEvent<SvdTask>) => {
  const t = e.data;
  try {
    if (t.op === "gemm") {
      gemmNTRows(
        view(t.P, t.f32),
        new Float64Array(t.R),
        t.cols,
        t.inner,
        new Float64Array(t.C),
        t.r0,
        t.r1,
      );
    } else if (t.op === "transpose") {
      transposeRows(view(t.A, t.f32), t.m, t.n, view(t.T, t.f32), t.j0, t.j1);
    } else {
      const { niter, oversample, seed } = t;
      const svd = randomizedSvd(view(t.A, t.f32), t.m, t.n, t.rank, { niter, oversample, seed });
      // The factors move to the main thread (no copy).
      const reply: SvdTaskReply = { id: t.id, ok: true, svd };
      self.postMessage(reply, [svd.U, svd.S, svd.Vt].map((x) => x.buffer as ArrayBuffer));
      return;
    }
    self.postMessage({ id: t.id, ok: true } satisfies SvdTaskReply);
  } catch (err) {
    self.postMessage({ id: t.id, ok: false, error: String(err) } satisfies SvdTaskReply);
  }
};

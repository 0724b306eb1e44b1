/**
 * The randomized SVD on several threads: a pool of Web Workers (`svd_worker.ts`, one per core by
 * default) computes the products with A and the transpose of A by row panels over shared memory,
 * while the main thread keeps the small parts (the Gaussian sketch, the QRs of [rows, l] panels and
 * the exact SVD of the [l, n] projection) and the order of the steps.
 *
 * Both paths run the same step sequence (`randomizedSvdPlan` in `svd.ts`) and every element of a
 * product is summed in the same order whichever rows a thread gets (`gemmNTRows`), so the result
 * has the same bits as `randomizedSvd` for any number of threads.
 * @module
 */
import {
  type RandomizedSvdOptions,
  randomizedSvdPlan,
  type Real,
  SvdError,
  type SvdResult,
} from "./svd.ts";
import type { SvdTask, SvdTaskReply } from "./svd_worker.ts";

/** Settings of a pool. */
export interface SvdPoolOptions {
  /** Worker threads (default `navigator.hardwareConcurrency`). */
  threads?: number;
}

/** The default size of a pool: one thread per core the runtime reports. */
export function defaultSvdThreads(): number {
  return Math.max(1, navigator.hardwareConcurrency || 1);
}

type Pending = {
  worker: number;
  resolve: (svd: SvdResult | undefined) => void;
  reject: (e: Error) => void;
};
type Task = SvdTask extends infer T ? T extends unknown ? Omit<T, "id"> : never : never;

/** A typed view of a new shared buffer of `length` elements. */
function sharedLike(f32: boolean, length: number): Real {
  const bytes = length * (f32 ? 4 : 8);
  const b = new SharedArrayBuffer(bytes);
  return f32 ? new Float32Array(b) : new Float64Array(b);
}

/** Row boundaries of `parts` panels of `rows` rows, on multiples of 4 (the kernel's row tile). */
function panels(rows: number, parts: number): [number, number][] {
  const out: [number, number][] = [];
  let start = 0;
  for (let k = 1; k <= parts; k++) {
    const end = k === parts ? rows : Math.min(rows, 4 * Math.round((rows * k) / (4 * parts)));
    if (end > start) out.push([start, end]);
    start = Math.max(start, end);
  }
  return out;
}

/**
 * A pool of SVD threads. Its SVDs run one at a time (each uses every thread); `close` ends the
 * threads, and a pool must be closed (or disposed) for the process to end.
 */
export class SvdPool {
  readonly threads: number;
  readonly #workers: Worker[];
  readonly #pending = new Map<number, Pending>();
  /** Tasks posted to each thread and not answered yet. */
  readonly #busy: number[];
  #nextId = 0;
  #closed = false;
  #broken: Error | null = null;
  /** The SVDs queued so far: the next one starts when this settles. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(options: SvdPoolOptions = {}) {
    const threads = options.threads ?? defaultSvdThreads();
    if (!Number.isInteger(threads) || threads < 1) {
      throw new SvdError(`an SVD pool needs a positive integer number of threads, got ${threads}`);
    }
    this.threads = threads;
    this.#busy = new Array(threads).fill(0);
    const url = new URL("./svd_worker.ts", import.meta.url);
    this.#workers = Array.from({ length: threads }, (_, k) => {
      const w = new Worker(url, { type: "module", name: `svd-${k}` });
      w.onmessage = (e: MessageEvent<SvdTaskReply>) => this.#reply(e.data);
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        this.#fail(new SvdError(`SVD thread ${k} failed: ${e.message}`));
      };
      return w;
    });
  }

  #reply(r: SvdTaskReply): void {
    const p = this.#pending.get(r.id);
    if (!p) return;
    this.#pending.delete(r.id);
    this.#busy[p.worker]--;
    if (r.ok) p.resolve(r.svd);
    else p.reject(new SvdError(`an SVD thread failed: ${r.error}`));
  }

  #fail(e: Error): void {
    this.#broken ??= e;
    for (const p of this.#pending.values()) p.reject(e);
    this.#pending.clear();
  }

  #run(worker: number, task: Task): Promise<SvdResult | undefined> {
    if (this.#broken) return Promise.reject(this.#broken);
    const id = this.#nextId++;
    return new Promise<SvdResult | undefined>((resolve, reject) => {
      this.#pending.set(id, { worker, resolve, reject });
      this.#busy[worker]++;
      this.#workers[worker].postMessage({ ...task, id } as SvdTask);
    });
  }

  /** Splits `rows` rows over the threads and runs `task(r0, r1)` on each panel. */
  async #split(rows: number, task: (r0: number, r1: number) => Task): Promise<void> {
    await Promise.all(panels(rows, this.threads).map(([r0, r1], k) => this.#run(k, task(r0, r1))));
  }

  /**
   * `randomizedSvd(A, m, n, rank, options)` with the products on the pool's threads: the same
   * checks, errors and result bits.
   */
  randomizedSvd(
    A: ArrayLike<number>,
    m: number,
    n: number,
    rank: number,
    options: RandomizedSvdOptions = {},
  ): Promise<SvdResult> {
    if (this.#closed) return Promise.reject(new SvdError("the SVD pool is closed"));
    // Bad arguments are refused at the call, before anything is queued.
    let steps: ReturnType<typeof randomizedSvdPlan>;
    try {
      steps = randomizedSvdPlan(A, m, n, rank, options);
    } catch (e) {
      return Promise.reject(e);
    }
    const run = this.#queue.then(() => this.#randomized(A, m, n, steps));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #randomized(
    A: ArrayLike<number>,
    m: number,
    n: number,
    steps: ReturnType<typeof randomizedSvdPlan>,
  ): Promise<SvdResult> {
    if (this.#closed) throw new SvdError("the SVD pool is closed");
    const f32 = A instanceof Float32Array;
    // float32 weights stay float32 in shared memory, as the single-threaded path reads them.
    const a = sharedLike(f32, m * n);
    a.set(A as ArrayLike<number>);
    let at: Real | null = null;
    let next = steps.next();
    while (!next.done) {
      const { transposed, R, cols } = next.value;
      if (transposed && !at) {
        const t = sharedLike(f32, m * n);
        await this.#split(n, (j0, j1) => ({
          op: "transpose",
          A: a.buffer as SharedArrayBuffer,
          T: t.buffer as SharedArrayBuffer,
          f32,
          m,
          n,
          j0,
          j1,
        }));
        at = t;
      }
      const rows = transposed ? n : m;
      const inner = transposed ? m : n;
      const r = sharedLike(false, R.length);
      r.set(R);
      const c = sharedLike(false, rows * cols);
      const P = (transposed ? at! : a).buffer as SharedArrayBuffer;
      await this.#split(rows, (r0, r1) => ({
        op: "gemm",
        P,
        f32,
        R: r.buffer as SharedArrayBuffer,
        C: c.buffer as SharedArrayBuffer,
        cols,
        inner,
        r0,
        r1,
      }));
      next = steps.next((c as Float64Array).slice());
    }
    return next.value;
  }

  /**
   * `randomizedSvd(A, m, n, rank, options)` whole on one thread of the pool (the least busy), with
   * the same bits: several matrices at once, one per thread, leave nothing serial on the main
   * thread. Each thread then holds its own transpose of A. The seed must be given as `seed` (a
   * generator cannot cross to a thread).
   */
  async randomizedSvdOnOneThread(
    A: ArrayLike<number>,
    m: number,
    n: number,
    rank: number,
    options: RandomizedSvdOptions = {},
  ): Promise<SvdResult> {
    if (this.#closed) throw new SvdError("the SVD pool is closed");
    if (options.rng) {
      throw new SvdError("an SVD on one thread of the pool takes a seed, not a generator");
    }
    randomizedSvdPlan(A, m, n, rank, options);
    const f32 = A instanceof Float32Array;
    const a = sharedLike(f32, m * n);
    a.set(A);
    const worker = this.#busy.indexOf(Math.min(...this.#busy));
    const { niter, oversample, seed } = options;
    const svd = await this.#run(worker, {
      op: "svd",
      A: a.buffer as SharedArrayBuffer,
      f32,
      m,
      n,
      rank,
      niter,
      oversample,
      seed,
    });
    if (!svd) throw new SvdError(`SVD thread ${worker} answered without the SVD`);
    return svd;
  }

  /** Ends the threads; SVDs still running fail with an SvdError. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#workers) w.terminate();
    this.#fail(new SvdError("the SVD pool was closed"));
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * An actor that records which call ids it ran, in a fixed-size bitmap (its memory does not grow
 * with the calls), so that a test can tell lost and duplicated calls apart from refused ones.
 */
import v8 from "node:v8";
import vm from "node:vm";
import { defineActor, tensor, z } from "../../mod.ts";

/**
 * Live memory of this process after a full garbage collection: the JS heap in use plus the
 * memory held outside it (ArrayBuffers: frames, tensors). Unlike the resident size, it does not
 * swing with the collector's schedule, so growth here is memory still referenced.
 */
export function liveMemory(): { heap: number; external: number; rss: number } {
  v8.setFlagsFromString("--expose-gc");
  const gc = vm.runInNewContext("gc") as () => void;
  gc();
  gc();
  const m = Deno.memoryUsage();
  return { heap: m.heapUsed, external: m.external, rss: m.rss };
}

interface LedgerState {
  ran: Uint8Array;
  runs: number;
  repeats: number;
}

export const Ledger = defineActor({
  name: "Ledger",
  module: import.meta.url,
  init: z.object({ ids: z.number().int().min(1) }),
  create: (input): LedgerState => ({ ran: new Uint8Array(input.ids), runs: 0, repeats: 0 }),
  methods: {
    /** Runs call `id` (taking `ms`), and answers with its id. */
    take: {
      input: z.object({ id: z.number().int().min(0), ms: z.number().min(0) }),
      output: z.number().int(),
      handler: async (s, x) => {
        if (s.ran[x.id]) s.repeats++;
        s.ran[x.id] = 1;
        s.runs++;
        if (x.ms > 0) await new Promise((r) => setTimeout(r, x.ms));
        return x.id;
      },
    },
    /** This node process's {@link liveMemory}. */
    memory: {
      input: z.object({}),
      output: z.object({ heap: z.number(), external: z.number(), rss: z.number() }),
      handler: () => liveMemory(),
    },
    /** The ids run so far (one byte each), with the counts. */
    ledger: {
      input: z.object({}),
      output: z.object({ ran: tensor("u8"), runs: z.number(), repeats: z.number() }),
      handler: (s) => ({ ran: s.ran, runs: s.runs, repeats: s.repeats }),
    },
  },
});

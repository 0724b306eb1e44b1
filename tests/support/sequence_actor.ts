/**
 * An actor that checks the calls it runs against the order each caller made them in: call `n`
 * of caller `c` must come right after call `n - 1` of the same caller. It records which calls ran
 * in a fixed-size bitmap (its memory does not grow with the calls), so that a test can tell lost,
 * repeated and reordered calls apart.
 */
import { defineActor, tensor, z } from "../../mod.ts";
import { liveMemory } from "./ledger_actor.ts";

interface SequenceState {
  calls: number;
  ran: Uint8Array;
  /** The call number each caller should send next. */
  next: Int32Array;
  runs: number;
  repeats: number;
  outOfOrder: number;
}

export const Sequence = defineActor({
  name: "Sequence",
  module: import.meta.url,
  init: z.object({ callers: z.number().int().min(1), calls: z.number().int().min(1) }),
  create: (input): SequenceState => ({
    calls: input.calls,
    ran: new Uint8Array(input.callers * input.calls),
    next: new Int32Array(input.callers),
    runs: 0,
    repeats: 0,
    outOfOrder: 0,
  }),
  methods: {
    /** Runs call `n` of caller `caller` (taking `ms`); answers with its index in the bitmap. */
    take: {
      input: z.object({
        caller: z.number().int().min(0),
        n: z.number().int().min(0),
        ms: z.number().min(0).optional(),
      }),
      output: z.number().int(),
      handler: async (s, x) => {
        if (x.caller >= s.next.length || x.n >= s.calls) throw new Error("call out of range");
        const id = x.caller * s.calls + x.n;
        if (s.ran[id]) s.repeats++;
        s.ran[id] = 1;
        s.runs++;
        if (x.n !== s.next[x.caller]) s.outOfOrder++;
        s.next[x.caller] = x.n + 1;
        if (x.ms) await new Promise((r) => setTimeout(r, x.ms));
        return id;
      },
    },
    /** The calls run so far (one byte each), with the counts. */
    ledger: {
      input: z.object({}),
      output: z.object({
        ran: tensor("u8"),
        runs: z.number(),
        repeats: z.number(),
        outOfOrder: z.number(),
      }),
      handler: (s) => ({ ran: s.ran, runs: s.runs, repeats: s.repeats, outOfOrder: s.outOfOrder }),
    },
    /** This node process's live memory (see ledger_actor.ts). */
    memory: {
      input: z.object({}),
      output: z.object({ heap: z.number(), external: z.number(), rss: z.number() }),
      handler: () => liveMemory(),
    },
  },
});

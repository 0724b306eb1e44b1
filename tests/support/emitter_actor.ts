/**
 * An actor that publishes application events on request (`ctx.emit`), for the tests of the
 * system's events stream.
 */
import { defineActor, z } from "../../mod.ts";

export const Emitter = defineActor({
  name: "Emitter",
  module: import.meta.url,
  init: z.object({}),
  create: () => ({}),
  methods: {
    /** Publishes one event per item. */
    emit: {
      input: z.array(z.object({ kind: z.string(), data: z.unknown() })),
      output: z.number(),
      handler: (_s, events, ctx) => {
        for (const e of events) ctx.emit(e.kind, e.data);
        return events.length;
      },
    },
  },
});

// A user-defined actor type, in the user's own module. Node processes import this module by its
// URL (it must be inside their allow-list), so it exports the definition and nothing with side
// effects.
import { defineActor, tensor, z } from "../mod.ts";

export const Greeter = defineActor({
  name: "Greeter",
  module: import.meta.url,
  init: z.object({ greeting: z.string().min(1) }),
  // The constructor may be async (open a file, acquire a device, ...).
  create: (input) => ({ greeting: input.greeting, greeted: 0 }),
  methods: {
    greet: {
      input: z.object({ name: z.string() }),
      output: z.object({ text: z.string(), count: z.number(), pid: z.number() }),
      handler: (state, input) => ({
        text: `${state.greeting}, ${input.name}!`,
        count: ++state.greeted,
        pid: Deno.pid,
      }),
    },
    /** Tensors travel as raw bytes, not JSON. */
    scale: {
      input: z.object({ x: tensor("f32"), by: z.number() }),
      output: tensor("f32"),
      handler: (_state, input) => input.x.map((v) => v * input.by),
    },
  },
});

/**
 * An actor that tries things on its node's own NATS connection and reports what the server
 * refused: what a compromised worker could attempt against the rest of the system.
 */
import { defineActor, z } from "../../mod.ts";

interface ProbeState {
  refused: { operation: string; subject: string }[];
}

const Outcome = z.object({
  refused: z.array(z.object({ operation: z.string(), subject: z.string() })),
});

/** Waits for the server's answer to what was just sent (a refusal comes back as an -ERR). */
async function settle(nc: { flush(): Promise<void> }) {
  await nc.flush();
  await new Promise((r) => setTimeout(r, 150));
  await nc.flush();
}

export const Probe = defineActor({
  name: "Probe",
  module: import.meta.url,
  init: z.object({}),
  create: (_input, ctx): ProbeState => {
    const s: ProbeState = { refused: [] };
    (async () => {
      for await (const st of ctx.nc.status()) {
        if (st.type !== "error") continue;
        const e = st.error as Error & { operation?: string; subject?: string };
        if (e.name === "PermissionViolationError" && e.subject) {
          s.refused.push({ operation: e.operation ?? "?", subject: e.subject });
        }
      }
    })().catch(() => {});
    return s;
  },
  methods: {
    /** Publishes each message; returns the refusals seen meanwhile. */
    publish: {
      input: z.array(z.object({ subject: z.string(), json: z.unknown() })),
      output: Outcome,
      handler: async (s, msgs, ctx) => {
        s.refused = [];
        for (const m of msgs) ctx.nc.publish(m.subject, JSON.stringify(m.json));
        await settle(ctx.nc);
        return { refused: s.refused };
      },
    },
    /** Subscribes to `subject` for a moment; returns the refusals seen meanwhile. */
    subscribe: {
      input: z.string(),
      output: Outcome,
      handler: async (s, subject, ctx) => {
        s.refused = [];
        const sub = ctx.nc.subscribe(subject, { callback: () => {} });
        await settle(ctx.nc);
        sub.unsubscribe();
        return { refused: s.refused };
      },
    },
  },
});

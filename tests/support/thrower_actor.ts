/**
 * An actor that throws on request: errors it declares (a base, a subclass with data fields, one
 * not built on DomainError), errors it does not declare, and declared errors whose payload cannot
 * pass the caller's checks. Node processes import it by URL.
 */
import { DomainError } from "../../core/errors.ts";
import { type ActorRef, defineActor, z } from "../../mod.ts";

/** A declared base class. */
export class ProtocolFault extends DomainError {
  static override readonly code: string = "PROTOCOL_FAULT";
}

/** A declared subclass with data fields. */
export class MissingParts extends ProtocolFault {
  static override readonly code: string = "MISSING_PARTS";
  static readonly fields = z.object({
    step: z.number().int(),
    parts: z.array(z.number().int()),
    note: z.string().optional(),
  });
  constructor(readonly step: number, readonly parts: number[], readonly note?: string) {
    super(`step ${step} lacks parts ${parts.join(", ")}`);
  }
}

/** A subclass of a declared class that is not declared itself. */
export class Unlisted extends ProtocolFault {
  static override readonly code: string = "UNLISTED";
}

/** A declared class outside the DomainError family. */
export class LegacyFault extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LegacyFault";
  }
}

/** Declared, but a field does not survive JSON. */
export class Unencodable extends DomainError {
  static override readonly code: string = "UNENCODABLE";
  static readonly fields = z.object({ n: z.number() });
  readonly n = 10n;
}

/** Declared, but thrown with a field its schema refuses. */
export class Mislabelled extends DomainError {
  static override readonly code: string = "MISLABELLED";
  static readonly fields = z.object({ step: z.number() });
  constructor(readonly step: unknown) {
    super(`step ${String(step)}`);
  }
}

/** Declared, but carries a field and describes none. */
export class Undescribed extends DomainError {
  static override readonly code: string = "UNDESCRIBED";
  readonly extra = 1;
}

export const THROWER_ERRORS = [
  ProtocolFault,
  MissingParts,
  LegacyFault,
  Unencodable,
  Mislabelled,
  Undescribed,
];

const Kind = z.enum([
  "base",
  "fields",
  "legacy",
  "unlisted",
  "type",
  "unencodable",
  "mislabelled",
  "undescribed",
]);

function toThrow(kind: z.infer<typeof Kind>): Error {
  switch (kind) {
    case "base":
      return new ProtocolFault("out of order");
    case "fields":
      return new MissingParts(7, [1, 3], "lost with a server");
    case "legacy":
      return new LegacyFault("old style");
    case "unlisted":
      return new Unlisted("not on the list");
    case "type":
      return new TypeError("a plain bug");
    case "unencodable":
      return new Unencodable("bigint inside");
    case "mislabelled":
      return new Mislabelled("three");
    case "undescribed":
      return new Undescribed("extra field");
  }
}

const refSchema = z.object({
  id: z.string(),
  name: z.string().optional(),
  type: z.string(),
  module: z.string().optional(),
});

export const Thrower = defineActor({
  name: "Thrower",
  module: import.meta.url,
  init: z.object({}),
  create: () => ({}),
  errors: THROWER_ERRORS,
  methods: {
    throw: {
      input: Kind,
      output: z.number(),
      handler: (_s, kind): number => {
        throw toThrow(kind);
      },
    },
    /** Calls another Thrower and lets its error through: two actor hops. */
    relay: {
      input: z.object({ target: refSchema, kind: Kind }),
      output: z.number(),
      handler: (_s, x, ctx): Promise<number> =>
        ctx.system.handle(Thrower, x.target as ActorRef).throw(x.kind),
    },
    /** Answers late: a window for another reply to arrive first. */
    slow: {
      input: z.number(),
      output: z.number(),
      handler: async (_s, ms) => {
        await new Promise((r) => setTimeout(r, ms));
        return ms;
      },
    },
  },
});

/** The same actor type as seen by a caller that declares no errors. */
export const ThrowerUndeclared = defineActor({
  name: "Thrower",
  module: Thrower.module,
  init: z.object({}),
  create: () => ({}),
  methods: { throw: Thrower.methods.throw },
});

/** A caller whose MissingParts has other fields than the actor's (a definition out of step). */
class SkewedMissingParts extends ProtocolFault {
  static override readonly code: string = "MISSING_PARTS";
  static readonly fields = z.object({
    step: z.string(),
    parts: z.array(z.number()),
    note: z.string().optional(),
  });
}
Object.defineProperty(SkewedMissingParts, "name", { value: "MissingParts" });

export const ThrowerSkewed = defineActor({
  name: "Thrower",
  module: Thrower.module,
  init: z.object({}),
  create: () => ({}),
  errors: [SkewedMissingParts],
  methods: { throw: Thrower.methods.throw },
});

/**
 * Everything of `mod.ts`, plus the internals that tests, benchmarks and tools reach for: binary
 * frames and their parts, the frame checksum, raw NATS connections, the embedded server, node
 * permissions and the driver's core. Not a stable API: these follow the implementation.
 * @module
 */
export * from "./mod.ts";

export { EmbeddedServer, type NodeIdentity } from "./runtime/nats_server.ts";
export { connectNats, splitUrlCredentials } from "./runtime/connect.ts";
export { inboxPrefixOf, nodePermissions } from "./runtime/permissions.ts";
export {
  decodeFrame,
  encodeFrame,
  type FramePlan,
  planFrame,
  writeFrame,
} from "./runtime/codec.ts";
export { type Part, type PartInfo, Reassembler, splitFrame, splitPlan } from "./runtime/chunks.ts";
export { checksum32 } from "./runtime/checksum.ts";

export { DriverCore, type DriverStep } from "./actors/driver.ts";

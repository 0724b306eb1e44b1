/**
 * Subject permissions of the node processes a system starts on its own embedded server.
 *
 * Each such node connects as its own user, which may publish only what a node has to: its own
 * heartbeat, its own lifecycle events and its own application events (so that no node can speak
 * for another, e.g. declare another node's actors dead), calls and control requests to this system's actors and nodes,
 * this system's application subjects, replies to any inbox, and the JetStream API and the
 * system's object store bucket. It may read this system's subjects and its own inbox only, so
 * it cannot watch the replies other processes receive. The process that started the system
 * keeps full rights.
 * @module
 */

/** The inbox prefix of a node user (the only inbox it may read). */
export function inboxPrefixOf(node: string): string {
  return `_INBOX.${node}`;
}

/** The `permissions` block of a node's user, in nats-server configuration syntax. */
export function nodePermissions(system: string, node: string): string {
  const root = `actors.${system}`;
  const publish = [
    `${root}.rt.hb.${node}`,
    `${root}.rt.ev.${node}`,
    `${root}.rt.ae.${node}`,
    `${root}.rt.a.>`,
    `${root}.rt.node.>`,
    `${root}.app.>`,
    "_INBOX.>",
    "$JS.API.>",
    "$JS.ACK.>",
    "$JS.FC.>",
    `$O.actors_${system}.>`,
  ];
  const subscribe = [`${root}.>`, `${inboxPrefixOf(node)}.>`];
  const list = (xs: string[]) => xs.map((x) => JSON.stringify(x)).join(", ");
  return `permissions: { publish: { allow: [${list(publish)}] }, subscribe: { allow: [${
    list(subscribe)
  }] } }`;
}

/**
 * The `permissions` block of the owner (driver) user of a system on a shared cluster: everything
 * of this system, any inbox, the JetStream API and the system's object store bucket, and nothing
 * of other systems. (On its own embedded server the owner has full rights instead.)
 */
export function ownerPermissions(system: string): string {
  const publish = [
    `actors.${system}.>`,
    "_INBOX.>",
    "$JS.API.>",
    "$JS.ACK.>",
    "$JS.FC.>",
    `$O.actors_${system}.>`,
  ];
  const subscribe = [`actors.${system}.>`, "_INBOX.>"];
  const list = (xs: string[]) => xs.map((x) => JSON.stringify(x)).join(", ");
  return `permissions: { publish: { allow: [${list(publish)}] }, subscribe: { allow: [${
    list(subscribe)
  }] } }`;
}

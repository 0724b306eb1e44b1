/**
 * Credentials for one system on a NATS cluster: one nkey per node and one for the driver, and
 * the `authorization` block every server of the cluster includes.
 *
 * ```sh
 * deno task cluster-creds --system job7 --nodes gpu1,gpu2 --out ./job7-creds
 * # every server's config:   include ./job7-creds/authorization.conf
 * # the node on gpu1:        NATS_NKEY_FILE=gpu1.nk deno task node --nats ... --system job7 --id gpu1
 * # the driver:              init({ nats, system: "job7", nkeySeed: <driver.nk> })
 * ```
 *
 * Each node's user gets the permissions the embedded server gives a node (runtime/permissions.ts):
 * it publishes only its own heartbeats and events and reads only its own inbox, so a node cannot
 * speak for another, and a key made for one system has no user on a cluster set up for another.
 * The driver's user may use everything of its system and nothing of other systems. Servers keep
 * only public keys; the seeds are written once, to files only their owner can read, and never
 * appear on a command line.
 * @module
 */
import { nkeys } from "@nats-io/nats-core";
import { defineFlags, FlagError } from "../cli/flags.ts";
import { checkToken } from "../runtime/protocol.ts";
import { nodePermissions, ownerPermissions } from "../runtime/permissions.ts";

export const FLAGS = defineFlags({
  name: "cluster-creds",
  about: "Writes the nkeys and the nats-server authorization block of a system on a cluster.",
  usage: "deno task cluster-creds --system NAME --nodes ID[,ID...] --out DIR",
  flags: {
    system: { type: "string", required: true, metavar: "NAME", help: "the system's name" },
    nodes: {
      type: "list",
      separator: ",",
      repeat: true,
      minItems: 1,
      required: true,
      metavar: "ID[,ID...]",
      itemName: "node id",
      help: "the ids the node processes will run with (--id)",
    },
    out: {
      type: "string",
      required: true,
      metavar: "DIR",
      help: "a new (or empty) folder for the files",
    },
  },
});

/** What one run writes. */
export interface ClusterCredentials {
  /** `authorization.conf`: the block the servers include (public keys and permissions only). */
  config: string;
  /** Seeds (`SU...`) by node id. */
  nodes: Map<string, string>;
  /** The driver's seed. */
  driver: string;
}

/** Makes fresh keys for `system`'s driver and nodes, and the servers' authorization block. */
export function clusterCredentials(system: string, nodeIds: readonly string[]): ClusterCredentials {
  try {
    checkToken("system", system);
    nodeIds.forEach((id) => checkToken("node", id));
  } catch (e) {
    throw new FlagError((e as Error).message);
  }
  const dup = nodeIds.find((id, i) => nodeIds.indexOf(id) !== i);
  if (dup !== undefined) throw new FlagError(`node id ${dup} is given twice`, "nodes");
  if (nodeIds.includes("driver")) {
    throw new FlagError(
      "node id driver would share driver.nk with the driver: pick another",
      "nodes",
    );
  }
  const make = () => {
    const kp = nkeys.createUser();
    return { seed: new TextDecoder().decode(kp.getSeed()), key: kp.getPublicKey() };
  };
  const driver = make();
  const nodes = new Map(nodeIds.map((id) => [id, make()]));
  const users = [
    `    # the driver (owner) of system ${system}\n    { nkey: "${driver.key}", ${
      ownerPermissions(system)
    } }`,
    ...[...nodes].map(([id, k]) =>
      `    # node ${id} of system ${system}\n    { nkey: "${k.key}", ${
        nodePermissions(system, id)
      } }`
    ),
  ];
  const config = [
    `# Users of system ${system}, written by deno task cluster-creds: public keys only.`,
    `# Include it in every server of the cluster: include ./authorization.conf`,
    `authorization {`,
    `  users: [`,
    users.join("\n"),
    `  ]`,
    `}`,
    ``,
  ].join("\n");
  return {
    config,
    nodes: new Map([...nodes].map(([id, k]) => [id, k.seed])),
    driver: driver.seed,
  };
}

/**
 * Writes `authorization.conf`, `driver.nk` and `<node>.nk` into `out` (created with mode 700;
 * refused when it holds anything, so that no earlier keys are overwritten). Seeds are mode 600.
 */
export async function writeClusterCredentials(
  out: string,
  system: string,
  nodeIds: readonly string[],
): Promise<ClusterCredentials> {
  const creds = clusterCredentials(system, nodeIds);
  try {
    for await (const _ of Deno.readDir(out)) {
      throw new FlagError(`${out} is not empty: keys are written to a new folder only`, "out");
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  await Deno.mkdir(out, { recursive: true, mode: 0o700 });
  await Deno.chmod(out, 0o700);
  const write = async (name: string, text: string) => {
    // Created with no rights for others from the start (not chmod-ed after being written).
    await Deno.writeTextFile(`${out}/${name}`, text, { mode: 0o600, createNew: true });
    await Deno.chmod(`${out}/${name}`, 0o600);
  };
  await write("authorization.conf", creds.config);
  await write("driver.nk", creds.driver + "\n");
  for (const [id, seed] of creds.nodes) await write(`${id}.nk`, seed + "\n");
  return creds;
}

if (import.meta.main) {
  const { options: o } = FLAGS.main();
  try {
    await writeClusterCredentials(o.out, o.system, o.nodes);
  } catch (e) {
    if (e instanceof FlagError) {
      console.error(`cluster-creds: ${e.message}`);
      Deno.exit(2);
    }
    throw e;
  }
  console.log(`wrote ${o.out}/authorization.conf, driver.nk and ${o.nodes.length} node keys`);
}

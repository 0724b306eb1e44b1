/**
 * Large blobs (base weights, checkpoints) in the JetStream Object Store, with SHA-256 digests.
 *
 * Ray's object store analogue, for data that is too big or too long-lived for messages: put once,
 * get from any node. Every get is checked against the digest recorded at put time.
 * @module
 */
import { type NatsConnection, NoRespondersError, TimeoutError } from "@nats-io/nats-core";
import { JetStreamApiError } from "@nats-io/jetstream";
import { type ObjectStore as NatsObjectStore, Objm } from "@nats-io/obj";
import { InvalidArgumentError, ObjectStoreError } from "./errors.ts";

/** What the store records about one object. */
export interface ObjectEntry {
  name: string;
  size: number;
  /** `SHA-256=<base64url>` of the whole object. */
  digest: string;
  mtime: string;
}

/** Options of {@link ObjectStore.open}. */
export interface ObjectStoreOptions {
  /** Where JetStream keeps it. Default "file". */
  storage?: "file" | "memory";
  /** Replicas in a JetStream cluster. Default 1. */
  replicas?: number;
}

/**
 * How long an operation keeps trying while the bucket's stream has no leader. When the server
 * that leads a replicated stream dies, the others elect a new leader within seconds; meanwhile
 * requests time out or find no responder. Waiting it out is what makes the replicas worth having.
 */
const ELECTION_WAIT_MS = 30_000;

/** JetStream's "temporarily unavailable" (no leader for the stream or the meta group yet). */
const JS_UNAVAILABLE = 10008;

/** A failure that a leader election explains, so trying again may succeed. */
function transient(e: unknown): boolean {
  for (let c: unknown = e; c instanceof Error; c = c.cause) {
    if (c instanceof TimeoutError || c instanceof NoRespondersError) return true;
    if (c instanceof JetStreamApiError && (c.code === JS_UNAVAILABLE || c.status === 503)) {
      return true;
    }
  }
  return false;
}

/**
 * Runs `op`, again while it fails as during a leader election (a timeout, no responder,
 * JetStream temporarily unavailable), until {@link ELECTION_WAIT_MS} have passed.
 */
export async function throughElections<T>(op: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + ELECTION_WAIT_MS;
  for (;;) {
    try {
      return await op();
    } catch (e) {
      if (!transient(e) || Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

async function sha256(data: Uint8Array): Promise<string> {
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>));
  const b64 = btoa(String.fromCharCode(...h)).replaceAll("+", "-").replaceAll("/", "_");
  return `SHA-256=${b64}`;
}

/** One bucket of the JetStream Object Store. */
export class ObjectStore {
  readonly #os: NatsObjectStore;

  private constructor(os: NatsObjectStore, readonly bucket: string) {
    this.#os = os;
  }

  /** Opens (creating when missing) a bucket. Needs JetStream on the server. */
  static async open(
    nc: NatsConnection,
    bucket: string,
    options: ObjectStoreOptions = {},
  ): Promise<ObjectStore> {
    if (!/^[A-Za-z0-9_-]+$/.test(bucket)) {
      throw new InvalidArgumentError(`bucket name ${JSON.stringify(bucket)} is invalid`);
    }
    try {
      const os = await throughElections(() =>
        new Objm(nc).create(
          bucket,
          {
            storage: options.storage === "memory" ? "memory" : "file",
            replicas: options.replicas ?? 1,
          } as Parameters<Objm["create"]>[1],
        )
      );
      return new ObjectStore(os, bucket);
    } catch (e) {
      throw new ObjectStoreError(
        `cannot open object store ${bucket} (is JetStream enabled on the server?): ${
          (e as Error).message
        }`,
        { cause: e },
      );
    }
  }

  /** Stores `data` under `name` (replacing any previous version); returns its entry. */
  async put(
    name: string,
    data: Uint8Array,
    options: { description?: string } = {},
  ): Promise<ObjectEntry> {
    checkName(name);
    // Putting again replaces a half-written object: the new one rolls the old one up.
    const info = await throughElections(() =>
      this.#os.putBlob({ name, description: options.description }, data)
    );
    return { name: info.name, size: info.size, digest: info.digest, mtime: info.mtime };
  }

  /**
   * The bytes stored under `name`, verified against their SHA-256 digest.
   *
   * With `digest` (the caller knows which bytes it wants: a load message names its manifest's,
   * the manifest its chunks'), an object that is missing or has another digest is waited for
   * until `waitMs` (default {@link ELECTION_WAIT_MS}) have passed, then an ObjectStoreError.
   * Why: in a replicated cluster the server a client asks can answer before it has caught up.
   * A host whose link just came back, or a lagging replica or stale leader, reports "not found"
   * (or the previous version) for an object another host put a moment ago; that is the same
   * window as a leader election, and it ends when the replica catches up. A get without a
   * digest cannot tell lag from absence and answers at once.
   */
  async get(name: string, options: { digest?: string; waitMs?: number } = {}): Promise<Uint8Array> {
    checkName(name);
    const want = options.digest;
    if (want === undefined) {
      const r = await this.#read(name);
      if (typeof r === "string") throw new ObjectStoreError(r);
      return r;
    }
    const waitMs = options.waitMs ?? ELECTION_WAIT_MS;
    if (!(waitMs >= 0)) throw new InvalidArgumentError(`waitMs ${waitMs}: >= 0 expected`);
    const deadline = Date.now() + waitMs;
    for (;;) {
      const r = await this.#read(name, want);
      if (typeof r !== "string") return r;
      if (Date.now() >= deadline) {
        throw new ObjectStoreError(`${r} (waited ${waitMs} ms for ${want})`);
      }
      await new Promise((res) =>
        setTimeout(res, Math.min(250, Math.max(1, deadline - Date.now())))
      );
    }
  }

  /**
   * One read of `name`: its verified bytes, or why not as a message (missing, not `want`, or not
   * the bytes its own entry records). A failed transfer is thrown.
   */
  async #read(name: string, want?: string): Promise<Uint8Array | string> {
    const info = await throughElections(() => this.#os.info(name));
    if (!info || info.deleted) return `object ${name} not found in ${this.bucket}`;
    if (want !== undefined && info.digest !== want) {
      return `object ${name} in ${this.bucket} has digest ${info.digest}, not ${want}`;
    }
    let data: Uint8Array | null;
    try {
      data = await throughElections(() => this.#os.getBlob(name));
    } catch (e) {
      throw new ObjectStoreError(`reading ${name} failed: ${(e as Error).message}`, { cause: e });
    }
    if (!data) return `object ${name} not found in ${this.bucket}`;
    const digest = await sha256(data);
    if (data.byteLength !== info.size || digest !== info.digest) {
      return `object ${name}: digest mismatch (stored ${info.digest}, ${info.size} bytes; read ${digest}, ${data.byteLength} bytes)`;
    }
    return data;
  }

  /** The entry of `name`, or undefined. */
  async info(name: string): Promise<ObjectEntry | undefined> {
    checkName(name);
    const i = await throughElections(() => this.#os.info(name));
    if (!i || i.deleted) return undefined;
    return { name: i.name, size: i.size, digest: i.digest, mtime: i.mtime };
  }

  /** Every object in the bucket. */
  async list(): Promise<ObjectEntry[]> {
    const all = await throughElections(() => this.#os.list());
    return all.filter((i) => !i.deleted).map((i) => ({
      name: i.name,
      size: i.size,
      digest: i.digest,
      mtime: i.mtime,
    }));
  }

  /** Deletes `name`; true when it existed. */
  async delete(name: string): Promise<boolean> {
    checkName(name);
    const i = await this.#os.info(name);
    if (!i || i.deleted) return false;
    await this.#os.delete(name);
    return true;
  }

  /** Deletes the whole bucket. */
  async destroy(): Promise<void> {
    await this.#os.destroy();
  }
}

function checkName(name: string) {
  if (typeof name !== "string" || name.length === 0 || name.length > 1024) {
    throw new InvalidArgumentError(`object name ${JSON.stringify(name)} is invalid`);
  }
}

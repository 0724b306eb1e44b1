/**
 * A headless Chromium driven over the DevTools protocol (a WebSocket, no npm package): open a
 * page, evaluate expressions in it, collect its errors (exceptions, console errors, refusals
 * such as Content-Security-Policy violations), take screenshots.
 */

/** The Debian package that provides the browser. */
export const CHROMIUM_PACKAGE = "chromium";

/** The browser's executable: `$HD_CHROMIUM`, else `chromium` (or `chromium-browser`) on PATH. */
export function findChromium(): string | null {
  const given = Deno.env.get("HD_CHROMIUM");
  if (given) return given;
  const dirs = (Deno.env.get("PATH") ?? "").split(":").concat(["/usr/bin", "/usr/local/bin"]);
  for (const name of ["chromium", "chromium-browser"]) {
    for (const d of dirs) {
      if (!d) continue;
      try {
        if (Deno.statSync(`${d}/${name}`).isFile) return `${d}/${name}`;
      } catch { /* not here */ }
    }
  }
  return null;
}

interface Pending {
  resolve(v: Record<string, unknown>): void;
  reject(e: Error): void;
}

type Listener = (params: Record<string, unknown>, sessionId?: string) => void;

/** One DevTools connection (the browser's), with flat sessions for pages. */
class Cdp {
  readonly #ws: WebSocket;
  readonly #pending = new Map<number, Pending>();
  readonly #listeners = new Map<string, Set<Listener>>();
  #seq = 0;
  #closed = false;

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.onmessage = (m) => {
      const msg = JSON.parse(String(m.data));
      if (typeof msg.id === "number") {
        const p = this.#pending.get(msg.id);
        this.#pending.delete(msg.id);
        if (!p) return;
        if (msg.error) p.reject(new Error(`${msg.error.message} (${msg.error.code})`));
        else p.resolve(msg.result ?? {});
      } else if (typeof msg.method === "string") {
        for (const l of this.#listeners.get(msg.method) ?? []) l(msg.params ?? {}, msg.sessionId);
      }
    };
    ws.onclose = () => {
      this.#closed = true;
      for (const p of this.#pending.values()) p.reject(new Error("the browser went away"));
      this.#pending.clear();
    };
  }

  static connect(url: string): Promise<Cdp> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.onopen = () => resolve(new Cdp(ws));
      ws.onerror = () => reject(new Error(`cannot connect to the browser at ${url}`));
    });
  }

  send(
    method: string,
    params: Record<string, unknown> = {},
    sessionId?: string,
  ): Promise<Record<string, unknown>> {
    if (this.#closed) return Promise.reject(new Error("the browser went away"));
    const id = ++this.#seq;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }

  on(method: string, l: Listener) {
    let set = this.#listeners.get(method);
    if (!set) this.#listeners.set(method, set = new Set());
    set.add(l);
  }

  close() {
    if (!this.#closed) this.#ws.close();
  }
}

/** A page (tab) of the browser. */
export class Page {
  /** Exceptions, console errors and refusals seen in the page, as text. */
  readonly errors: string[] = [];

  constructor(private readonly cdp: Cdp, private readonly session: string) {}

  /** The value of `expression` (JSON-serialisable), evaluated in the page. */
  async evaluate<T>(expression: string): Promise<T> {
    const r = await this.cdp.send("Runtime.evaluate", {
      expression,
      returnByValue: true,
      awaitPromise: true,
    }, this.session);
    const ex = r.exceptionDetails as { text?: string; exception?: { description?: string } };
    if (ex) throw new Error(`in the page: ${ex.exception?.description ?? ex.text}`);
    return (r.result as { value: T }).value;
  }

  /** Polls `expression` until it is truthy; returns its value. */
  async waitFor<T>(what: string, expression: string, timeoutMs = 20_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await this.evaluate<T>(expression);
      if (v) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting in the page until ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** A PNG of the whole page (not only the viewport), scaled by `scale`. */
  async screenshot(scale = 1): Promise<Uint8Array> {
    const m = await this.cdp.send("Page.getLayoutMetrics", {}, this.session);
    const size = (m.cssContentSize ?? m.contentSize) as { width: number; height: number };
    const r = await this.cdp.send("Page.captureScreenshot", {
      format: "png",
      captureBeyondViewport: true,
      clip: { x: 0, y: 0, width: size.width, height: size.height, scale },
    }, this.session);
    return Uint8Array.from(atob(r.data as string), (c) => c.charCodeAt(0));
  }
}

/** A headless Chromium process with a fresh profile. */
export class Browser {
  private constructor(
    private readonly child: Deno.ChildProcess,
    private readonly cdp: Cdp,
    private readonly profile: string,
    private readonly log: string[],
  ) {}

  /** Starts the browser; throws naming the package when it is not installed. */
  static async launch(): Promise<Browser> {
    const exe = findChromium();
    if (!exe) {
      throw new Error(
        `no headless browser: install the Debian package "${CHROMIUM_PACKAGE}" ` +
          `(as root: apt-get install -y ${CHROMIUM_PACKAGE}; \`deno task test\` does it when run ` +
          `as root), or name the executable in HD_CHROMIUM`,
      );
    }
    const profile = await Deno.makeTempDir({ prefix: "hd-chromium-" });
    const child = new Deno.Command(exe, {
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--hide-scrollbars",
        "--mute-audio",
        `--user-data-dir=${profile}`,
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "about:blank",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const log: string[] = [];
    (async () => {
      const dec = new TextDecoder();
      for await (const chunk of child.stderr) log.push(dec.decode(chunk));
    })().catch(() => {});
    // The browser writes its DevTools port and path into the profile once it listens.
    const deadline = Date.now() + 30_000;
    let endpoint = "";
    while (!endpoint) {
      try {
        const [port, path] = (await Deno.readTextFile(`${profile}/DevToolsActivePort`)).split("\n");
        if (port && path) endpoint = `ws://127.0.0.1:${port.trim()}${path.trim()}`;
      } catch { /* not yet */ }
      if (!endpoint) {
        if (Date.now() > deadline) {
          try {
            child.kill("SIGKILL");
          } catch { /* exited */ }
          throw new Error(`the browser did not start: ${log.join("").slice(-2000)}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    const cdp = await Cdp.connect(endpoint);
    return new Browser(child, cdp, profile, log);
  }

  /** Opens `url` in a new tab of `width` × `height` CSS pixels. */
  async open(url: string, width = 1280, height = 900): Promise<Page> {
    const { targetId } = await this.cdp.send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await this.cdp.send("Target.attachToTarget", { targetId, flatten: true });
    const session = sessionId as string;
    const page = new Page(this.cdp, session);
    this.cdp.on("Runtime.exceptionThrown", (p, s) => {
      if (s !== session) return;
      const d = p.exceptionDetails as { text?: string; exception?: { description?: string } };
      page.errors.push(`exception: ${d.exception?.description ?? d.text}`);
    });
    this.cdp.on("Runtime.consoleAPICalled", (p, s) => {
      if (s !== session || p.type !== "error") return;
      const args = (p.args as { value?: unknown; description?: string }[]) ?? [];
      page.errors.push(`console: ${args.map((a) => a.value ?? a.description).join(" ")}`);
    });
    this.cdp.on("Log.entryAdded", (p, s) => {
      const e = p.entry as { level: string; text: string; url?: string };
      if (s === session && e.level === "error") page.errors.push(`log: ${e.text} ${e.url ?? ""}`);
    });
    for (const m of ["Runtime.enable", "Page.enable", "Log.enable"]) {
      await this.cdp.send(m, {}, session);
    }
    await this.cdp.send("Emulation.setDeviceMetricsOverride", {
      width,
      height,
      deviceScaleFactor: 1,
      mobile: false,
    }, session);
    let loaded!: () => void;
    const load = new Promise<void>((r) => loaded = r);
    this.cdp.on("Page.loadEventFired", (_p, s) => {
      if (s === session) loaded();
    });
    const nav = await this.cdp.send("Page.navigate", { url }, session);
    if (nav.errorText) throw new Error(`opening ${url}: ${nav.errorText}`);
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      load,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${url} did not load within 30 s`)), 30_000);
      }),
    ]).finally(() => clearTimeout(timer));
    return page;
  }

  /** The browser's own output (for a failure's message). */
  get output(): string {
    return this.log.join("");
  }

  /** Closes the browser and removes its profile. */
  async close(): Promise<void> {
    await this.cdp.send("Browser.close").catch(() => {});
    this.cdp.close();
    const timer = setTimeout(() => {
      try {
        this.child.kill("SIGKILL");
      } catch { /* exited */ }
    }, 5000);
    await this.child.status;
    clearTimeout(timer);
    await Deno.remove(this.profile, { recursive: true }).catch(() => {});
  }
}

// Makes sure the system packages the project needs are present: `nats-server` (the embedded
// default cluster and the tests) and a Vulkan driver for WebGPU (lavapipe on machines without a
// GPU), `openssl` (certificates for the TLS tests); with `--tests` also `chromium`, the
// headless browser of the dashboard's test. Installs them with apt-get when running as root on
// Debian/Ubuntu; otherwise prints the exact command to run and exits non-zero. Quiet when
// everything is already there.

const forTests = Deno.args.includes("--tests");

const PACKAGES: { pkg: string; present: () => boolean; why: string; tests?: boolean }[] = [
  { pkg: "nats-server", present: () => onPath("nats-server"), why: "the message bus" },
  {
    pkg: "mesa-vulkan-drivers",
    present: hasVulkanDriver,
    why: "a Vulkan driver for WebGPU (lavapipe runs it on the CPU when there is no GPU)",
  },
  { pkg: "openssl", present: () => onPath("openssl"), why: "certificates for the TLS tests" },
  {
    pkg: "chromium",
    present: () => onPath("chromium"),
    why: "a headless browser for the dashboard's test",
    tests: true,
  },
];

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function onPath(cmd: string): boolean {
  const dirs = (Deno.env.get("PATH") ?? "").split(":").concat(["/usr/sbin", "/usr/bin"]);
  return dirs.some((d) => d && exists(`${d}/${cmd}`));
}

function hasVulkanDriver(): boolean {
  const dirs = [
    "/usr/share/vulkan/icd.d",
    "/etc/vulkan/icd.d",
    "/usr/local/share/vulkan/icd.d",
    "/usr/local/nvidia/share/vulkan/icd.d",
  ];
  const loader = [
    "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
    "/usr/lib/aarch64-linux-gnu/libvulkan.so.1",
    "/usr/lib/libvulkan.so.1",
  ]
    .some(exists);
  if (!loader) return false;
  if (Deno.env.get("VK_DRIVER_FILES") || Deno.env.get("VK_ICD_FILENAMES")) return true;
  for (const d of dirs) {
    try {
      for (const e of Deno.readDirSync(d)) if (e.name.endsWith(".json")) return true;
    } catch { /* folder absent */ }
  }
  return false;
}

async function run(cmd: string[]): Promise<boolean> {
  const p = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    env: { DEBIAN_FRONTEND: "noninteractive" },
    stdout: "inherit",
    stderr: "inherit",
  });
  return (await p.output()).success;
}

const wanted = PACKAGES.filter((p) => forTests || !p.tests);
const missing = wanted.filter((p) => !p.present());
if (missing.length > 0) {
  const names = missing.map((p) => p.pkg);
  const cmd = `apt-get update && apt-get install -y ${names.join(" ")}`;
  const isRoot = Deno.uid?.() === 0;
  if (isRoot && onPath("apt-get")) {
    console.error(
      `setup: installing ${names.join(", ")} (${missing.map((p) => p.why).join("; ")})`,
    );
    const ok = await run(["apt-get", "update", "-qq"]) &&
      await run(["apt-get", "install", "-y", "-qq", ...names]);
    if (!ok || wanted.some((p) => !p.present())) {
      console.error(`setup: installing failed; run as root: ${cmd}`);
      Deno.exit(1);
    }
  } else {
    console.error(
      `setup: missing ${names.join(", ")} (${missing.map((p) => p.why).join("; ")}).\n` +
        `Install them, e.g. as root: ${cmd}`,
    );
    Deno.exit(1);
  }
}

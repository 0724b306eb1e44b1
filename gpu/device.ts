/**
 * Opening a WebGPU device: adapter choice, limits, features.
 * @module
 */
import { GpuError, NoAdapterError } from "./errors.ts";

/** The adapter choices, as the `--device` flag spells them. */
export const ADAPTER_CHOICES = ["auto", "gpu", "cpu"] as const;

/** Which adapter to use. */
export type AdapterChoice =
  /**
   * A real GPU when there is one; otherwise a CPU adapter, announced: the opened device's
   * `info.fallback` says why, so that callers can warn and record it.
   */
  | "auto"
  /** Only a real GPU; a CPU adapter (lavapipe, SwiftShader) or none is an error. */
  | "gpu"
  /** Only a CPU adapter (e.g. Mesa lavapipe), even when a GPU is present. */
  | "cpu";

export interface DeviceOptions {
  /** Default "auto". */
  adapter?: AdapterChoice;
  /** Label of the device, shown in WebGPU error messages. */
  label?: string;
}

/** What the engine needs to know about the adapter it got. */
export interface DeviceInfo {
  description: string;
  vendor: string;
  architecture: string;
  /** The adapter is a fallback (software) adapter. */
  isFallback: boolean;
  /** The adapter runs on the CPU (lavapipe/llvmpipe or SwiftShader), fallback or not. */
  isCpu: boolean;
  /**
   * Set when `auto` had to run on a CPU adapter: why no GPU adapter was used (none found, or the
   * error the driver gave). Null on a GPU, or when the CPU adapter was asked for.
   */
  fallback: string | null;
  /** `timestamp-query` was available and is enabled on the device. */
  timestamps: boolean;
  /** `shader-f16` was available and is enabled on the device. */
  shaderF16: boolean;
  features: string[];
}

export interface OpenedDevice {
  adapter: GPUAdapter;
  device: GPUDevice;
  info: DeviceInfo;
}

// Limits whose WebGPU defaults are too small for model-sized tensors and kernels; the adapter's
// own maximum is requested for each.
const RAISED_LIMITS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupsPerDimension",
] as const;

// Alignments are "better" when smaller; the adapter's own allow tensor views at finer offsets
// and pack uniform parameters densely.
const FINER_ALIGNMENTS = [
  "minStorageBufferOffsetAlignment",
  "minUniformBufferOffsetAlignment",
] as const;

const MISSING_DRIVER_HINT = "No WebGPU adapter was found: there is neither a GPU with a Vulkan " +
  "driver nor the Vulkan software driver (Mesa lavapipe). Install the Debian/Ubuntu package " +
  "mesa-vulkan-drivers (as root: apt-get install -y mesa-vulkan-drivers), or the GPU's Vulkan " +
  "driver, and run again.";

let runtimeDirReady = false;

// The Vulkan loader warns on every start when XDG_RUNTIME_DIR is unset; a private temporary
// folder silences it without touching anything shared.
function ensureRuntimeDir(): void {
  if (runtimeDirReady) return;
  runtimeDirReady = true;
  try {
    if (!Deno.env.get("XDG_RUNTIME_DIR")) {
      Deno.env.set("XDG_RUNTIME_DIR", Deno.makeTempDirSync({ prefix: "xdg-runtime-" }));
    }
  } catch {
    // Without env/write permission the warning stays; nothing else depends on it.
  }
}

function adapterIsFallback(adapter: GPUAdapter): boolean {
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  const legacy = (adapter as GPUAdapter & { isFallbackAdapter?: boolean }).isFallbackAdapter;
  return Boolean(info.isFallbackAdapter ?? legacy ?? false);
}

function adapterDescription(adapter: GPUAdapter): string {
  return adapter.info.description || adapter.info.device || adapter.info.vendor || "";
}

/** A software adapter, or a hardware-class one that runs on the CPU (lavapipe, SwiftShader). */
export function adapterIsCpu(adapter: GPUAdapter): boolean {
  return adapterIsFallback(adapter) ||
    /llvmpipe|lavapipe|swiftshader/i.test(adapterDescription(adapter));
}

/**
 * The adapter `openDevice({ adapter: "auto" })` would try first, without opening a device: its
 * limits and whether it runs on the CPU, for planning before any worker starts. Null when WebGPU
 * offers none; the error of a driver that throws is passed on.
 */
export async function probeAdapter(): Promise<
  { limits: GPUSupportedLimits; isCpu: boolean } | null
> {
  ensureRuntimeDir();
  const gpu = (globalThis.navigator as Navigator & { gpu?: GPU }).gpu;
  const adapter = await gpu?.requestAdapter({ powerPreference: "high-performance" });
  return adapter ? { limits: adapter.limits, isCpu: adapterIsCpu(adapter) } : null;
}

/**
 * Opens a device on the best adapter allowed by `options.adapter`, with raised limits and
 * `timestamp-query` and `shader-f16` when available.
 *
 * @throws NoAdapterError when WebGPU is missing or no adapter matches; the message names the
 *   Vulkan driver package to install.
 */
export async function openDevice(options: DeviceOptions = {}): Promise<OpenedDevice> {
  ensureRuntimeDir();
  const choice = options.adapter ?? "auto";
  const gpu = (globalThis.navigator as Navigator & { gpu?: GPU }).gpu;
  if (!gpu) {
    throw new NoAdapterError(`WebGPU is not available in this runtime. ${MISSING_DRIVER_HINT}`);
  }

  // Some drivers throw instead of returning null when they cannot start: the error is kept, so
  // that a fallback to the CPU adapter can say why it happened.
  const errors: string[] = [];
  const request = async (o: GPURequestAdapterOptions) => {
    try {
      return await gpu.requestAdapter(o);
    } catch (e) {
      errors.push((e as Error).message);
      return null;
    }
  };
  let adapter: GPUAdapter | null = null;
  let fallback: string | null = null;
  if (choice !== "cpu") {
    const found = await request({ powerPreference: "high-performance" });
    if (found && !adapterIsCpu(found)) adapter = found;
    else if (choice === "auto") {
      fallback = found
        ? `the only adapter is a CPU one (${adapterDescription(found)})`
        : errors.length > 0
        ? `requesting a GPU adapter failed: ${errors.join("; ")}`
        : "no GPU adapter was found";
    }
  }
  if (!adapter && choice !== "gpu") {
    adapter = await request({ forceFallbackAdapter: true }) ??
      await request({ powerPreference: "low-power" });
    if (adapter && !adapterIsCpu(adapter)) {
      // A driver without a software adapter hands out a GPU here: use it, nothing to announce.
      fallback = null;
    }
  }
  if (!adapter) {
    if (choice === "gpu") {
      throw new NoAdapterError(
        "No GPU adapter was found (only a CPU adapter or none" +
          (errors.length > 0 ? `; ${errors.join("; ")}` : "") +
          "). Install the GPU's Vulkan driver, or use --device auto/cpu to run on the CPU " +
          "driver (mesa-vulkan-drivers).",
      );
    }
    throw new NoAdapterError(MISSING_DRIVER_HINT);
  }

  const requiredLimits: Record<string, number> = {};
  const limits = adapter.limits as unknown as Record<string, number>;
  for (const name of [...RAISED_LIMITS, ...FINER_ALIGNMENTS]) {
    const v = limits[name];
    if (typeof v === "number") requiredLimits[name] = v;
  }
  const timestamps = adapter.features.has("timestamp-query");
  // shader-f16 lets the tiled matmul stage two f16 operands as f16 (kernels/matmul_tiled.ts).
  const shaderF16 = adapter.features.has("shader-f16");
  const requiredFeatures: GPUFeatureName[] = [
    ...(timestamps ? ["timestamp-query" as const] : []),
    ...(shaderF16 ? ["shader-f16" as const] : []),
  ];
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({
      label: options.label ?? "hd-pissa",
      requiredLimits,
      requiredFeatures,
    });
  } catch (e) {
    throw new GpuError(
      `could not open a device on ${adapter.info.description || "the adapter"}: ${
        (e as Error).message
      }`,
      { cause: e },
    );
  }

  const ai = adapter.info;
  const description = adapterDescription(adapter);
  const isFallback = adapterIsFallback(adapter);
  const isCpu = adapterIsCpu(adapter);
  return {
    adapter,
    device,
    info: {
      description,
      vendor: ai.vendor,
      architecture: ai.architecture,
      isFallback,
      isCpu,
      fallback: isCpu ? fallback : null,
      timestamps,
      shaderF16,
      features: [...device.features].map(String).sort(),
    },
  };
}

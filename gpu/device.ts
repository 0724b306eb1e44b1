/**
 * Opening a WebGPU device: adapter choice, limits, features.
 * @module
 */
import { GpuError, NoAdapterError } from "./errors.ts";

/** Which adapter to use. */
export type AdapterChoice =
  /** A real GPU (high-performance) when there is one, the fallback (CPU) adapter otherwise. */
  | "auto"
  /** Only a real GPU; a missing one is an error. */
  | "gpu"
  /** Only the fallback adapter (e.g. Mesa lavapipe), even when a GPU is present. */
  | "fallback";

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
  /** `timestamp-query` was available and is enabled on the device. */
  timestamps: boolean;
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

/**
 * Opens a device on the best adapter allowed by `options.adapter`, with raised limits and
 * `timestamp-query` when available.
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

  // Some drivers throw instead of returning null when they cannot start; both mean "none".
  const request = async (o: GPURequestAdapterOptions) => {
    try {
      return await gpu.requestAdapter(o);
    } catch {
      return null;
    }
  };
  let adapter: GPUAdapter | null = null;
  if (choice !== "fallback") {
    adapter = await request({ powerPreference: "high-performance" });
    if (adapter && choice === "gpu" && adapterIsFallback(adapter)) adapter = null;
  }
  if (!adapter && choice !== "gpu") {
    adapter = await request({ forceFallbackAdapter: true });
  }
  if (!adapter) {
    if (choice === "gpu") {
      throw new NoAdapterError(
        "No GPU adapter was found (only a fallback adapter or none). Install the GPU's Vulkan " +
          "driver, or use adapter: 'auto' to run on the CPU driver (mesa-vulkan-drivers).",
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
  const requiredFeatures: GPUFeatureName[] = timestamps ? ["timestamp-query"] : [];
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
  const description = ai.description || ai.device || "";
  const isFallback = adapterIsFallback(adapter);
  const isCpu = isFallback || /llvmpipe|lavapipe|swiftshader/i.test(description);
  return {
    adapter,
    device,
    info: {
      description,
      vendor: ai.vendor,
      architecture: ai.architecture,
      isFallback,
      isCpu,
      timestamps,
      features: [...device.features].map(String).sort(),
    },
  };
}

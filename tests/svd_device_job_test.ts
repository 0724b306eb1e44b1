// --svd-device: the init's randomized SVDs on the workers' devices (round-robin), the factors
// shared through the driver; and auto's announced choice. Real nats-server, real WebGPU.
import assert from "node:assert/strict";
import { runFinetune } from "../actors/job.ts";
import { readReportJson } from "../train/report/report.ts";
import { tinyOptions, writeTinySetup } from "./support/tiny_run.ts";

async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

const io = (lines: string[]) => ({
  log: (l: string) => lines.push(l),
  isTty: false,
  progress: () => {},
});

Deno.test("--svd-device gpu: SVDs on the workers' devices, same seed same bits; auto announces its pick", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-svddev-" });
  try {
    await writeTinySetup(dir);
    // Randomized SVDs even at the tiny shapes; checksums every 2 steps hold the workers'
    // shared state to the same bits.
    const run = (out: string, svdDevice: "cpu" | "gpu" | "auto") =>
      tinyOptions(dir, { out: `${dir}/${out}`, svd: "randomized", svdDevice, eval: null });
    const a = run("a", "gpu");
    const linesA: string[] = [];
    await runFinetune(a, io(linesA));
    const reportA = await readReportJson(`${a.out}/report.json`);
    assert.deepEqual(reportA.svd_device, { asked: "gpu", used: "gpu", reason: "--svd-device gpu" });
    assert.ok(
      linesA.some((l) => /randomized SVD of \d+ matrices on the 2 workers' devices/.test(l)),
      linesA.join("\n"),
    );

    const b = run("b", "gpu");
    await runFinetune(b, io([]));
    assert.ok(await sameBytes(`${a.out}/model.safetensors`, `${b.out}/model.safetensors`));

    // auto on this machine's adapters: the driver's threads when a worker is on a CPU adapter,
    // a GPU path only when every worker has a GPU; said in the log and in report.json.
    const c = run("c", "auto");
    const linesC: string[] = [];
    await runFinetune(c, io(linesC));
    const reportC = await readReportJson(`${c.out}/report.json`);
    const onCpu = reportC.devices!.some((d) => /llvmpipe|lavapipe|swiftshader/i.test(d));
    const used = onCpu ? "cpu" : "gpu";
    assert.equal(reportC.svd_device?.used, used, JSON.stringify(reportC.svd_device));
    assert.match(reportC.svd_device!.reason, onCpu ? /^auto: workers? .* CPU adapter/ : /^auto:/);
    assert.ok(
      linesC.some((l) => l.includes(`(${reportC.svd_device!.reason})`)),
      linesC.join("\n"),
    );
    // The f32 passes on the device and the float64 host path give other bits: the gpu run
    // really took its factors from the workers.
    if (onCpu) {
      assert.ok(!(await sameBytes(`${a.out}/model.safetensors`, `${c.out}/model.safetensors`)));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

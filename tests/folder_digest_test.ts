import assert from "node:assert/strict";
import {
  checkWeightDigests,
  fileSha256,
  WeightDigestError,
  weightFileDigests,
} from "../model/folder_digest.ts";

Deno.test("weight digests: a folder checks against its own digests; a changed byte is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/model.safetensors`, new Uint8Array([1, 2, 3]));
    await Deno.writeTextFile(`${dir}/config.json`, "{}");
    // SHA-256 of the bytes 01 02 03.
    assert.equal(
      await fileSha256(`${dir}/model.safetensors`),
      "039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81",
    );
    const digests = await weightFileDigests(dir);
    assert.deepEqual(Object.keys(digests), ["model.safetensors"]);
    await checkWeightDigests(dir, digests);

    await Deno.writeFile(`${dir}/model.safetensors`, new Uint8Array([1, 2, 4]));
    await assert.rejects(
      () => checkWeightDigests(dir, digests),
      (e: unknown) =>
        e instanceof WeightDigestError && e.file === "model.safetensors" &&
        e.expected === digests["model.safetensors"] && /the file changed/.test(e.message),
    );
    await assert.rejects(
      () => checkWeightDigests(dir, { ...digests, "model-2.safetensors": "00" }),
      WeightDigestError,
    );
    await assert.rejects(() => checkWeightDigests(`${dir}/nope`, digests), WeightDigestError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

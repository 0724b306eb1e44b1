// The OpenAI-compatible server on the shipped byte model: the official `openai` client (chat and
// completions, streaming and not), raw fetch for the error cases (the server stays up), an API
// key, and 32 concurrent requests (greedy and seeded sampling, their own limits, stop strings and
// streams), batched, each answered as when sent alone.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { serve } from "../infer/server.ts";
import { InferenceSession } from "../infer/session.ts";
import { GREEDY } from "../model/sampling.ts";

Deno.test("serve: openai client, errors, concurrent load", async (t) => {
  const session = await InferenceSession.open("models/base");
  const server = serve(session, { port: 0, modelId: "base" });
  const base = `http://127.0.0.1:${server.addr.port}/v1`;
  const client = new OpenAI({ baseURL: base, apiKey: "unused" });
  try {
    await t.step("models", async () => {
      const list = await client.models.list();
      assert.deepEqual(list.data.map((m) => m.id), ["base"]);
    });

    await t.step("completions: plain and streamed agree; usage", async () => {
      const req = { model: "base", prompt: "The cat", max_tokens: 12, temperature: 0 };
      const r = await client.completions.create(req);
      assert.equal(r.choices[0].finish_reason, "length");
      assert.equal(r.usage?.completion_tokens, 12);
      assert.equal(r.usage?.prompt_tokens, 8); // bos + 7 bytes
      const parts: string[] = [];
      for await (const c of await client.completions.create({ ...req, stream: true })) {
        parts.push(c.choices[0]?.text ?? "");
      }
      assert.equal(parts.join(""), r.choices[0].text);
      assert.ok(parts.filter((p) => p !== "").length > 1, "streamed in several chunks");
    });

    await t.step("chat: plain and streamed, seeded sampling, stop", async () => {
      const req = {
        model: "base",
        messages: [{ role: "user" as const, content: "Hello" }],
        max_tokens: 10,
        temperature: 0.9,
        top_p: 0.95,
        seed: 4,
      };
      const a = await client.chat.completions.create(req);
      const b = await client.chat.completions.create(req);
      assert.equal(a.choices[0].message.content, b.choices[0].message.content);
      let streamed = "";
      for await (const c of await client.chat.completions.create({ ...req, stream: true })) {
        streamed += c.choices[0]?.delta?.content ?? "";
      }
      assert.equal(streamed, a.choices[0].message.content);
      const text = a.choices[0].message.content!;
      const cut = text.slice(3, 5);
      const s = await client.chat.completions.create({ ...req, stop: [cut] });
      assert.equal(s.choices[0].message.content, text.slice(0, text.indexOf(cut)));
      assert.equal(s.choices[0].finish_reason, "stop");
    });

    await t.step("errors: OpenAI error objects and status codes; the server stays up", async () => {
      const post = (path: string, body: string) =>
        fetch(`${base}${path}`, {
          method: "POST",
          body,
          headers: { "content-type": "application/json" },
        });
      const cases: [string, string, number, string | null][] = [
        ["/completions", "{not json", 400, null],
        ["/completions", JSON.stringify({ model: "nope", prompt: "x" }), 404, "model_not_found"],
        ["/completions", JSON.stringify({ model: "base", prompt: 3 }), 400, null],
        [
          "/completions",
          JSON.stringify({ model: "base", prompt: "x", temperature: "hot" }),
          400,
          null,
        ],
        ["/completions", JSON.stringify({ model: "base", prompt: "x", n: 2 }), 400, null],
        [
          "/completions",
          JSON.stringify({ model: "base", prompt: "x".repeat(100), max_tokens: 5 }),
          400,
          "context_length_exceeded",
        ],
        ["/chat/completions", JSON.stringify({ model: "base", messages: [] }), 400, null],
        ["/chat/completions", "x".repeat(2 << 20), 413, null],
        ["/nowhere", "{}", 404, "not_found"],
      ];
      for (const [path, body, status, code] of cases) {
        const r = await post(path, body);
        const j = await r.json();
        assert.equal(r.status, status, `${path} ${body.slice(0, 60)}: ${JSON.stringify(j)}`);
        assert.equal(typeof j.error.message, "string");
        assert.equal(typeof j.error.type, "string");
        assert.ok("param" in j.error && "code" in j.error);
        if (code !== null) assert.equal(j.error.code, code);
      }
      const ok = await client.completions.create({ model: "base", prompt: "a", max_tokens: 2 });
      assert.equal(ok.choices.length, 1);
    });

    await t.step("32 concurrent requests, batched: each as when sent alone", async () => {
      // Mixed settings: greedy (bit for bit), sampled with top-k/top-p, a repetition penalty,
      // its own token limit and stop string; every fourth one streamed.
      const reqs = Array.from({ length: 32 }, (_, i) => ({
        model: "base",
        prompt: `Item ${i}:`,
        max_tokens: 8 + (i % 9),
        temperature: i % 5 === 0 ? 0 : 0.8,
        top_p: i % 3 === 0 ? 0.9 : 1,
        top_k: i % 7 === 0 ? 20 : 0,
        repetition_penalty: i % 6 === 1 ? 1.3 : 1,
        stop: i % 4 === 2 ? ["e"] : undefined,
        seed: i,
      }));
      const ask = async (r: (typeof reqs)[number], i: number) => {
        if (i % 4 !== 3) {
          const c = (await client.completions.create(r)).choices[0];
          return { text: c.text, finish: c.finish_reason };
        }
        let text = "";
        let finish: string | null = null;
        for await (const c of await client.completions.create({ ...r, stream: true })) {
          text += c.choices[0]?.text ?? "";
          finish = c.choices[0]?.finish_reason ?? finish;
        }
        return { text, finish };
      };
      const sequential: { text: string; finish: string | null }[] = [];
      for (const [i, r] of reqs.entries()) sequential.push(await ask(r, i));
      const t0 = performance.now();
      const all = await Promise.all(reqs.map((r) => client.completions.create(r)));
      const s = (performance.now() - t0) / 1000;
      const tokens = all.reduce((a, r) => a + (r.usage?.completion_tokens ?? 0), 0);
      console.log(
        `server, 32 concurrent requests: ${tokens} tokens in ${s.toFixed(2)} s = ` +
          `${(tokens / s).toFixed(1)} tokens/s`,
      );
      const streamed = await Promise.all(reqs.map(ask));
      assert.equal(all.length, 32);
      all.forEach((r, i) => {
        assert.equal(r.choices[0].text, sequential[i].text, `request ${i}`);
        assert.equal(r.choices[0].finish_reason, sequential[i].finish, `request ${i}`);
        assert.ok(r.usage!.completion_tokens <= reqs[i].max_tokens);
      });
      assert.deepEqual(streamed, sequential);
      assert.ok(all.some((r) => r.choices[0].finish_reason === "stop"), "a stop string ends some");
    });
  } finally {
    await server.shutdown();
    await session.close();
  }
});

Deno.test("serve: a non-loopback host needs an API key; the key is checked", async () => {
  const session = await InferenceSession.open("models/base");
  try {
    assert.throws(
      () => serve(session, { hostname: "0.0.0.0", port: 0, modelId: "base" }),
      /API key/,
    );
    const server = serve(session, { port: 0, modelId: "base", apiKey: "k1" });
    try {
      const url = `http://127.0.0.1:${server.addr.port}/v1/models`;
      const no = await fetch(url);
      assert.equal(no.status, 401);
      assert.equal((await no.json()).error.code, "invalid_api_key");
      const yes = await fetch(url, { headers: { authorization: "Bearer k1" } });
      assert.equal(yes.status, 200);
      await yes.body?.cancel();
    } finally {
      await server.shutdown();
    }
  } finally {
    await session.close();
  }
});

Deno.test("session: a request whose stream callback throws fails alone", async () => {
  const session = await InferenceSession.open("models/base");
  try {
    const req = {
      params: { ...GREEDY },
      seed: 0,
      maxNewTokens: 6,
      stop: [],
    };
    const prompt = session.completionIds("The cat");
    const [alone] = await session.generate([prompt], req);
    const broken = session.generate([prompt], req, () => {
      throw new Error("client gone");
    });
    const other = session.generate([prompt], { ...req, maxNewTokens: 9 });
    await assert.rejects(broken, /client gone/);
    const [o] = await other;
    assert.equal(o.ids.length, 9);
    assert.deepEqual(o.ids.slice(0, 6), alone.ids);
  } finally {
    await session.close();
  }
});

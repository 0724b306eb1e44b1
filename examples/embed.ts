// Embedding the actor runtime in a Deno program: start a local cluster (a private nats-server
// and two node processes), spawn a user-defined actor on it, call it, look it up by name, and
// shut everything down.
//
//   deno run -A examples/embed.ts
import { init } from "../mod.ts";
import { Greeter } from "./greeter_actor.ts";

const system = await init({ nodes: 2 });
try {
  const greeter = await system.spawn(Greeter, { greeting: "Hello" }, { name: "greeter" });
  const reply = await greeter.greet({ name: "world" });
  console.log(
    `${reply.text} (call ${reply.count}, answered by process ${reply.pid}, we are ${Deno.pid})`,
  );

  // Any process of the system can find a named actor.
  const same = await system.getActor(Greeter, "greeter");
  console.log((await same.greet({ name: "again" })).text);

  const scaled = await greeter.scale({ x: new Float32Array([1, 2, 3]), by: 2 });
  console.log(`scaled on the node: ${[...scaled].join(", ")}`);
  console.log(`nodes: ${system.nodes().map((n) => `${n.id} (pid ${n.pid})`).join(", ")}`);
} finally {
  await system.shutdown();
}

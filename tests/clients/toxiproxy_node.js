// Drives weft's Toxiproxy API with the real `toxiproxy-node-client`, against a TCP echo
// service: run by tests/toxiproxy.rs as `node toxiproxy_node.js API_PORT ECHO_ADDRESS`.
// Every exchange has a timeout; any failure exits non-zero with the reason.
"use strict";

const assert = require("node:assert");
const net = require("node:net");
const { Toxiproxy } = require("toxiproxy-node-client");

const LATENCY_MS = 2000;
const [apiPort, echo] = process.argv.slice(2);

function exchange(port, payload = "ping from node") {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const socket = net.connect({ host: "127.0.0.1", port }, () => socket.write(payload));
    let got = "";
    socket.setTimeout(15000, () => socket.destroy(new Error("timed out")));
    socket.on("data", (data) => {
      got += data;
      if (got.length >= payload.length) {
        assert.strictEqual(got, payload);
        socket.end();
        resolve(Number(process.hrtime.bigint() - start) / 1e6);
      }
    });
    socket.on("error", reject);
    socket.on("end", () => reject(new Error(`closed after ${JSON.stringify(got)}`)));
  });
}

async function main() {
  const toxiproxy = new Toxiproxy(`http://127.0.0.1:${apiPort}`);
  console.log("version:", await toxiproxy.getVersion());
  const proxy = await toxiproxy.createProxy({ name: "node_echo", listen: "127.0.0.1:0", upstream: echo });
  const port = Number(proxy.listen.split(":").pop());
  assert.notStrictEqual(port, 0, `listen reports the port bound: ${proxy.listen}`);
  assert.ok("node_echo" in (await toxiproxy.getAll()));

  let took = await exchange(port);
  console.log(`plain echo in ${took} ms`);
  assert.ok(took < LATENCY_MS * 0.75, `plain echo took ${took} ms`);

  const latency = await proxy.addToxic({
    name: "latency", type: "latency", stream: "downstream", toxicity: 1, attributes: { latency: LATENCY_MS },
  });
  assert.deepStrictEqual(latency.attributes, { latency: LATENCY_MS, jitter: 0 });
  took = await exchange(port);
  console.log(`echo with latency in ${took} ms`);
  assert.ok(took >= LATENCY_MS, `the latency toxic delays the answer: ${took} ms`);
  await latency.remove();

  await proxy.addToxic({ name: "reset", type: "reset_peer", stream: "downstream", toxicity: 1, attributes: { timeout: 0 } });
  await assert.rejects(exchange(port), (error) => error.code === "ECONNRESET", "the connection is reset");
  console.log("reset_peer: ECONNRESET");

  await toxiproxy.reset();
  const after = await toxiproxy.get("node_echo");
  assert.strictEqual(after.enabled, true);
  took = await exchange(port);
  console.log(`after reset, plain echo in ${took} ms`);
  assert.ok(took < LATENCY_MS * 0.75);

  await proxy.remove();
  assert.ok(!("node_echo" in (await toxiproxy.getAll())));
  console.log("node client: ok");
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});

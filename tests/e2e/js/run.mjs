// Runs AWS SDK for JavaScript v3 Lambda commands against an Ember server, for the end-to-end
// tests (tests/e2e/js_sdk.py writes the request on stdin and reads the answer on stdout).
//
// stdin: {"endpoint", "region", "accessKeyId", "secretAccessKey",
//         "calls": [{"op": "ListFunctions", "input": {...}}, ...]}
// stdout: one JSON array, one entry per call, in order:
//         {"output": {...}}  (the command's output; "$metadata" keeps "httpStatusCode")
//         {"error": {"name", "message", "status"}}  (the SDK's exception)
// Bytes (ZipFile, Payload) travel as {"$base64": "..."} both ways. The calls run one after the
// other on one client; a failed call does not stop the next.
import * as lambda from "@aws-sdk/client-lambda";

function decode(value) {
  if (Array.isArray(value)) return value.map(decode);
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "$base64") {
      return new Uint8Array(Buffer.from(value.$base64, "base64"));
    }
    return Object.fromEntries(keys.map((k) => [k, decode(value[k])]));
  }
  return value;
}

function encode(value) {
  if (value instanceof Uint8Array) return { $base64: Buffer.from(value).toString("base64") };
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return value.map(encode);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, encode(v)]));
  }
  return value;
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const request = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const client = new lambda.LambdaClient({
    endpoint: request.endpoint,
    region: request.region,
    credentials: {
      accessKeyId: request.accessKeyId,
      secretAccessKey: request.secretAccessKey,
    },
    maxAttempts: 1,
  });
  const results = [];
  for (const call of request.calls) {
    const Command = lambda[`${call.op}Command`];
    if (Command === undefined) {
      throw new Error(`@aws-sdk/client-lambda has no ${call.op}Command`);
    }
    try {
      const output = await client.send(new Command(decode(call.input ?? {})));
      results.push({ output: encode(output) });
    } catch (err) {
      if (err?.$metadata === undefined) throw err; // not an answer from the server
      results.push({
        error: { name: err.name, message: err.message, status: err.$metadata.httpStatusCode },
      });
    }
  }
  client.destroy();
  process.stdout.write(JSON.stringify(results));
}

main().catch((err) => {
  process.stderr.write(`${err?.stack ?? err}\n`);
  process.exit(1);
});

// What every client script shares: its command line, its JSON-lines output, its exit code.
//
//   node <script>.mjs <gateway base URL> <prompt> [--stream] [--header 'Name: value']...
//                     [--timeout ms] [--max-retries n] [--model id]
//
// The API key comes from GATEWAY_API_KEY (default "unused": an open gateway). Every line
// printed is one JSON object with an `event` and `t` (unix ms): `request`, `attempt` and
// `response` (each HTTP attempt the client made), `text` (a content delta), `approval` (an
// approval session id the client could see, and `via` what showed it), `tool_event`,
// `comment` (an SSE comment line such as `: heartbeat`, seen on the wire on its way to the
// client, which gets the bytes unchanged), `error`, and last `summary` (`ok`, the text
// joined, every approval id seen). The exit code is 0 only when the request succeeded.

import { parseArgs } from "node:util";

export function readOptions() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      stream: { type: "boolean", default: false },
      header: { type: "string", multiple: true, default: [] },
      timeout: { type: "string" },
      "max-retries": { type: "string" },
      model: { type: "string", default: "offline-model" },
    },
  });
  if (positionals.length !== 2) {
    throw new Error("usage: <script> <gateway base URL> <prompt> [options]");
  }
  const [baseURL, prompt] = positionals;
  return {
    baseURL: `${baseURL.replace(/\/+$/, "")}/v1`,
    prompt,
    stream: values.stream,
    headers: Object.fromEntries(values.header.map(splitHeader)),
    timeout: values.timeout === undefined ? undefined : Number(values.timeout),
    maxRetries: values["max-retries"] === undefined ? undefined : Number(values["max-retries"]),
    model: values.model,
    apiKey: process.env.GATEWAY_API_KEY || "unused",
  };
}

function splitHeader(header) {
  const colon = header.indexOf(":");
  if (colon <= 0) throw new Error(`--header must be 'Name: value', not ${JSON.stringify(header)}`);
  return [header.slice(0, colon).trim(), header.slice(colon + 1).trim()];
}

export function emit(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ event, t: Date.now(), ...fields })}\n`);
}

/** A `fetch` that reports each attempt the client makes, the status it gets back, and the
 * SSE comment lines of a streamed answer. */
export function reportingFetch() {
  let attempt = 0;
  return async (input, init) => {
    attempt += 1;
    const headers = new Headers(init?.headers);
    emit("attempt", {
      attempt,
      retry_count: headers.get("x-stainless-retry-count"),
      idempotency_key: headers.get("idempotency-key"),
    });
    const response = await fetch(input, init);
    emit("response", {
      attempt,
      status: response.status,
      request_id: response.headers.get("x-request-id"),
      conversation: response.headers.get("x-conversation-id"),
    });
    return reportingComments(response);
  };
}

function reportingComments(response) {
  const type = response.headers.get("content-type") ?? "";
  if (!response.body || !type.startsWith("text/event-stream")) return response;
  const decoder = new TextDecoder();
  let partial = "";
  const watcher = new TransformStream({
    transform(bytes, controller) {
      partial += decoder.decode(bytes, { stream: true });
      const lines = partial.split("\n");
      partial = lines.pop();
      for (const line of lines) {
        if (line.startsWith(":")) emit("comment", { line: line.trimEnd() });
      }
      controller.enqueue(bytes);
    },
  });
  const { status, statusText, headers } = response;
  return new Response(response.body.pipeThrough(watcher), { status, statusText, headers });
}

/** What a run saw, turned into the `summary` line. */
export class Observed {
  constructor() {
    this.started = Date.now();
    this.text = "";
    this.approvalIds = [];
    this.finishReason = null;
  }

  textDelta(delta) {
    if (!delta) return;
    this.text += delta;
    emit("text", { delta });
  }

  approval(session, via) {
    if (!session?.id) return;
    if (!this.approvalIds.includes(session.id)) this.approvalIds.push(session.id);
    emit("approval", { id: session.id, status: session.status, via });
  }

  summary(ok, extra = {}) {
    emit("summary", {
      ok,
      text: this.text,
      approval_ids: this.approvalIds,
      finish_reason: this.finishReason,
      elapsed_ms: Date.now() - this.started,
      ...extra,
    });
  }
}

/** Run `body(options, observed)`; print the summary; exit non-zero on an exception. */
export async function main(client, body) {
  const observed = new Observed();
  try {
    const options = readOptions();
    emit("request", { client, stream: options.stream, headers: options.headers });
    await body(options, observed);
    observed.summary(true);
  } catch (error) {
    emit("error", { name: error?.name, message: String(error?.message ?? error) });
    observed.summary(false, { error: String(error?.message ?? error) });
    process.exitCode = 1;
  }
}

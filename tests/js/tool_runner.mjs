// The official `openai` JS SDK's tool runner, `client.chat.completions.runTools`: it asks the
// model, runs the functions the model calls, sends their results back, and repeats until
// the model answers. Streamed with --stream.
//
// Its two tools, send_email(to, body) and delete_file(path), mail and delete nothing: each
// prints a `tool_ran` line with the arguments it got. A `tool_call` line is each call the
// runner received from the gateway; the summary's text is the runner's final content.

import OpenAI from "openai";

import { emit, main, reportingFetch } from "./common.mjs";

function recording(name, description, parameters, result) {
  const properties = Object.fromEntries(parameters.map((p) => [p, { type: "string" }]));
  return {
    type: "function",
    function: {
      name,
      description,
      parameters: { type: "object", properties, required: parameters },
      parse: JSON.parse,
      function: (args) => {
        emit("tool_ran", { name, arguments: args });
        return result(args);
      },
    },
  };
}

const TOOLS = [
  recording("send_email", "Send an email.", ["to", "body"], ({ to }) => `sent to ${to}`),
  recording("delete_file", "Delete a file.", ["path"], ({ path }) => `deleted ${path}`),
];

await main("openai-tool-runner", async (options, observed) => {
  const client = new OpenAI({
    baseURL: options.baseURL,
    apiKey: options.apiKey,
    defaultHeaders: options.headers,
    fetch: reportingFetch(),
  });
  const runner = client.chat.completions.runTools({
    model: options.model,
    messages: [{ role: "user", content: options.prompt }],
    tools: TOOLS,
    stream: options.stream,
  });
  runner.on("functionToolCall", (call) => emit("tool_call", call));
  observed.textDelta(await runner.finalContent());
  const completion = await runner.finalChatCompletion();
  observed.finishReason = completion.choices[0]?.finish_reason ?? null;
});

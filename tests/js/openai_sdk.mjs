// The official `openai` JS SDK: chat.completions.create, streamed or not.
// It keeps a chunk's extra fields, so the approval and tool events are visible as they come.

import OpenAI from "openai";

import { emit, main, reportingFetch } from "./common.mjs";

await main("openai", async (options, observed) => {
  const client = new OpenAI({
    baseURL: options.baseURL,
    apiKey: options.apiKey,
    defaultHeaders: options.headers,
    fetch: reportingFetch(),
    ...(options.timeout === undefined ? {} : { timeout: options.timeout }),
    ...(options.maxRetries === undefined ? {} : { maxRetries: options.maxRetries }),
  });
  const request = {
    model: options.model,
    messages: [{ role: "user", content: options.prompt }],
  };
  if (!options.stream) {
    const completion = await client.chat.completions.create(request);
    observed.approval(completion.approval, "completion");
    observed.textDelta(completion.choices[0]?.message?.content);
    observed.finishReason = completion.choices[0]?.finish_reason ?? null;
    return;
  }
  const stream = await client.chat.completions.create({ ...request, stream: true });
  for await (const chunk of stream) {
    observed.approval(chunk.approval, "chunk");
    if (chunk.tool_event) emit("tool_event", chunk.tool_event);
    for (const choice of chunk.choices ?? []) {
      observed.textDelta(choice.delta?.content);
      observed.finishReason = choice.finish_reason ?? observed.finishReason;
    }
  }
});

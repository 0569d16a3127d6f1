// The Vercel AI SDK (`ai`): streamText or generateText over a provider's chat model.
// The SDK drops a chunk's extra fields from what it returns; the approval is visible only
// in the raw chunks (`includeRawChunks`) or the raw response body, reported as `via`.

import { generateText, streamText } from "ai";

import { emit } from "./common.mjs";

export async function runAiSdk(model, options, observed) {
  const request = {
    model,
    prompt: options.prompt,
    ...(options.maxRetries === undefined ? {} : { maxRetries: options.maxRetries }),
    ...(options.timeout === undefined ? {} : { abortSignal: AbortSignal.timeout(options.timeout) }),
  };
  if (!options.stream) {
    const result = await generateText(request);
    observed.approval(result.response?.body?.approval, "response body");
    observed.textDelta(result.text);
    observed.finishReason = result.finishReason;
    return;
  }
  const result = streamText({ ...request, includeRawChunks: true });
  for await (const part of result.fullStream) {
    if (part.type === "raw") {
      observed.approval(part.rawValue?.approval, "raw chunk");
      if (part.rawValue?.tool_event) emit("tool_event", part.rawValue.tool_event);
    } else if (part.type === "text-delta") {
      observed.textDelta(part.text);
    } else if (part.type === "finish") {
      observed.finishReason = part.finishReason;
    } else if (part.type === "error") {
      throw part.error instanceof Error ? part.error : new Error(JSON.stringify(part.error));
    }
  }
}

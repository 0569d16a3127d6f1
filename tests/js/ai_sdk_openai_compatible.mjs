// The Vercel AI SDK with `@ai-sdk/openai-compatible`: createOpenAICompatible(...)(model).

import { createOpenAICompatible } from "@ai-sdk/openai-compatible";

import { runAiSdk } from "./ai_sdk.mjs";
import { main, reportingFetch } from "./common.mjs";

await main("ai-sdk/openai-compatible", async (options, observed) => {
  const provider = createOpenAICompatible({
    name: "gateway",
    baseURL: options.baseURL,
    apiKey: options.apiKey,
    headers: options.headers,
    fetch: reportingFetch(),
  });
  await runAiSdk(provider(options.model), options, observed);
});

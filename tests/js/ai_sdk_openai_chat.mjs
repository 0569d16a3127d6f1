// The Vercel AI SDK with `@ai-sdk/openai`: createOpenAI(...).chat(model), the Chat
// Completions model. Its streamed request reads ahead until the first content (or tool call)
// before handing the stream over, so nothing of a held stream shows until the decision,
// unless the gateway also says the approval notice as content (`X-Approval-Notice: content`).

import { createOpenAI } from "@ai-sdk/openai";

import { runAiSdk } from "./ai_sdk.mjs";
import { main, reportingFetch } from "./common.mjs";

await main("ai-sdk/openai .chat()", async (options, observed) => {
  const provider = createOpenAI({
    baseURL: options.baseURL,
    apiKey: options.apiKey,
    headers: options.headers,
    fetch: reportingFetch(),
  });
  await runAiSdk(provider.chat(options.model), options, observed);
});

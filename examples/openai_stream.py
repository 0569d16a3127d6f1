"""Stream a chat through the gateway with the official openai SDK and show the approval flow.

Run `make run`, then `python examples/openai_stream.py`, and approve from another terminal:
`curl -s localhost:8000/v1/approvals/<id>/decision -H 'content-type: application/json' \
-d '{"decision": "approve"}'`.
"""

from __future__ import annotations

import sys

import openai


def main(base_url: str = "http://127.0.0.1:8000/v1") -> None:
    client = openai.OpenAI(base_url=base_url, api_key="unused")
    stream = client.chat.completions.create(
        model="offline-model",
        messages=[{"role": "user", "content": "Use getStringLength on 'approval gateway'"}],
        stream=True,
    )
    for chunk in stream:
        extra = chunk.model_extra or {}
        if "approval" in extra:
            approval = extra["approval"]
            print(f"\n[approval {approval['status']}] id={approval['id']}")
            for call in approval["tool_calls"]:
                print(f"  {call['name']}({call['arguments']})  policy={call['policy']}")
            if approval["status"] == "pending":
                print(
                    f"  decide: curl -s {base_url}/approvals/{approval['id']}/decision "
                    """-H 'content-type: application/json' -d '{"decision": "approve"}'"""
                )
        if "tool_event" in extra:
            print(f"[tool {extra['tool_event']['type']}] {extra['tool_event']}")
        for choice in chunk.choices:
            print(choice.delta.content or "", end="", flush=True)
    print()


if __name__ == "__main__":
    main(*sys.argv[1:])

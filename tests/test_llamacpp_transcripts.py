"""The wire adapter on what llama.cpp's server really said (transcripts recorded by
`python -m compat.run --record`, tests/fixtures/llamacpp/): each quirk is read as the
gateway's settings for that server expect."""

from __future__ import annotations

import orjson
import pytest

from compat.transcripts import Transcript, load
from core.errors import UpstreamError, UpstreamRejected
from gateway.upstream import TurnBuilder, TurnEnd, upstream_status_error


def replay(transcript: Transcript) -> tuple[str, TurnEnd]:
    """The text and the turn the adapter reads from a recorded answer."""
    turn = TurnBuilder()
    if transcript.content_type.startswith("application/json"):
        text = turn.add_completion(orjson.loads(transcript.body)) or ""
    else:
        text = "".join(turn.feed(transcript.body))
        turn.close()
    return text, turn.end()


@pytest.mark.parametrize("scenario", ["tools_forced_stream", "tools_forced", "tools_auto"])
def test_a_tool_call_is_read_whole_whether_streamed_or_not(scenario: str) -> None:
    # Streamed, the server repeats the id and the name on every delta.
    _, turn = replay(load(scenario))
    [call] = turn.calls
    assert call.name == "getStringLength" and call.arguments == {"text": "hello"}
    assert turn.finish_reason == "tool_calls"


def test_a_streamed_request_with_tools_and_auto_gets_an_empty_body() -> None:
    # What the gateway detects (upstream_stream_tools=auto) to ask again, whole.
    transcript = load("tools_auto_stream")
    turn = TurnBuilder()
    assert transcript.status == 200 and turn.feed(transcript.body) == [] and turn.empty


def test_without_tool_choice_the_model_never_sees_the_tools() -> None:
    # Why the gateway sends tool_choice "auto" (upstream_tool_choice=auto).
    for scenario in ("tools_no_choice", "tools_no_choice_stream"):
        text, turn = replay(load(scenario))
        assert turn.calls == [] and text


def test_a_plain_stream_without_usage_is_complete() -> None:
    text, turn = replay(load("plain_stream"))
    assert text and turn.finish_reason in ("stop", "length") and turn.prompt_tokens == 0


@pytest.mark.parametrize("scenario", ["followup_content_null", "followup_content_missing"])
def test_content_null_or_missing_is_refused_with_a_500(scenario: str) -> None:
    # Why the gateway sends "" instead (upstream_assistant_content=empty).
    transcript = load(scenario)
    assert transcript.status == 500
    error = upstream_status_error(transcript.status, "…")
    assert type(error) is UpstreamError and error.status_code == 502
    assert load("followup_content_empty").status == 200


def test_its_4xx_would_be_the_clients_fault() -> None:
    assert isinstance(upstream_status_error(422, "bad"), UpstreamRejected)

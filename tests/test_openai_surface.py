"""What clients expect of an OpenAI-compatible endpoint, and what upstreams need of it: the
model list, OpenAI's error objects, request ids, CORS, every request field passed on, and
the upstream quirks (tool_choice, content "", servers that will not stream with tools)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.clients import HeldStream, decide, sdk
from tests.conftest import Replica, StackFactory
from tests.hostile import HostileUpstream, call, turn
from tests.mediation import raw_chat
from tests.processes import free_port


def test_the_model_list_is_the_upstreams_and_unknown_models_are_404(gateway: Replica) -> None:
    client = sdk(gateway.url)
    ids = [model.id for model in client.models.list()]
    assert ids == ["offline-model"]  # what the offline model serves
    assert client.models.retrieve("offline-model").id == "offline-model"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-nope")
    assert missing.value.code == "not_found"


def test_configured_models_are_listed(make_stack: StackFactory) -> None:
    replica = make_stack(models='["fast", "careful"]').replicas[0]
    listed = httpx.get(f"{replica.url}/v1/models").json()
    assert [m["id"] for m in listed["data"]] == ["fast", "careful"]
    assert {m["object"] for m in listed["data"]} == {"model"}


def test_errors_are_openai_error_objects(gateway: Replica) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 9}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body)
    error = response.json()["error"]
    assert response.status_code == 400
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(gateway.url).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], temperature=9
        )
    assert raised.value.code == "invalid_request" and raised.value.param == "temperature"
    missing = httpx.get(f"{gateway.url}/v1/nowhere").json()["error"]
    assert missing["type"] == "not_found_error" and missing["code"] == "not_found"


def test_every_response_has_a_request_id_and_a_usable_one_is_echoed(gateway: Replica) -> None:
    made = httpx.get(f"{gateway.url}/healthz").headers["x-request-id"]
    assert made.startswith("req_")
    echoed = httpx.get(f"{gateway.url}/v1/nowhere", headers={"X-Request-Id": "trace-42"})
    assert echoed.headers["x-request-id"] == "trace-42"
    odd = httpx.get(f"{gateway.url}/healthz", headers={"X-Request-Id": "a b<c>"})
    assert odd.headers["x-request-id"].startswith("req_")


def test_cors_is_off_unless_origins_are_configured(make_stack: StackFactory) -> None:
    preflight = {
        "Origin": "http://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os",
    }
    plain = make_stack().replicas[0]
    refused = httpx.options(f"{plain.url}/v1/chat/completions", headers=preflight)
    assert refused.status_code == 405 and "access-control-allow-origin" not in refused.headers
    allowed = make_stack(cors_origins='["http://app.example"]').replicas[0]
    response = httpx.options(f"{allowed.url}/v1/chat/completions", headers=preflight)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://app.example"
    assert "x-stainless-os" in response.headers["access-control-allow-headers"].lower()
    other = httpx.options(
        f"{allowed.url}/v1/chat/completions", headers={**preflight, "Origin": "http://evil"}
    )
    assert other.status_code == 400


def test_request_fields_reach_the_upstream_and_unrelayable_ones_are_refused(
    make_stack: StackFactory, hostile_upstream: HostileUpstream
) -> None:
    replica = make_stack(upstream=hostile_upstream.url).replicas[0]
    marker = hostile_upstream.script(turn(text='{"ok": true}'))
    fields = {
        "response_format": {"type": "json_object"},
        "parallel_tool_calls": False,
        "reasoning_effort": "low",
        "frequency_penalty": 0.5,
        "presence_penalty": 0.1,
        "logit_bias": {"42": -100},
        "user": "u-1",
        "metadata": {"team": "blue"},
        "service_tier": "default",
        "prediction": {"type": "content", "content": "x"},
        "some_future_field": 1,
    }
    body = {"model": "m", "messages": [{"role": "user", "content": marker}], **fields}
    answer = httpx.post(f"{replica.url}/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code == 200
    [sent] = hostile_upstream.requests(marker)
    for name, value in fields.items():
        if name == "some_future_field":
            assert name not in sent  # not in GATEWAY_UPSTREAM_FIELDS
        elif name == "parallel_tool_calls":
            assert name in sent  # tools are offered (the server-side ones)
        else:
            assert sent[name] == value, name
    for refused in ({"logprobs": True}, {"top_logprobs": 3}, {"modalities": ["text", "audio"]}):
        bad = httpx.post(f"{replica.url}/v1/chat/completions", json={**body, **refused})
        assert bad.status_code == 400, refused
        assert bad.json()["error"]["param"] in ("logprobs", "modalities", None)


def test_tool_choice_auto_is_sent_with_tools_and_never_without(
    make_stack: StackFactory, hostile_upstream: HostileUpstream
) -> None:
    replica = make_stack(upstream=hostile_upstream.url, max_tool_rounds="1").replicas[0]
    marker = hostile_upstream.script(turn(call("lookupCapital", {"country": "Kenya"})))
    seen = raw_chat(replica.url, marker)
    assert seen.done
    first, second = hostile_upstream.requests(marker)
    assert first["tool_choice"] == "auto" and first["tools"]
    # The rounds are used up: no tools are offered, so no tool_choice either.
    assert "tools" not in second and "tool_choice" not in second


def test_content_empty_for_upstreams_that_refuse_null(
    make_stack: StackFactory, hostile_upstream: HostileUpstream
) -> None:
    replica = make_stack(
        upstream=hostile_upstream.url, upstream_assistant_content="empty"
    ).replicas[0]
    marker = hostile_upstream.script(turn(call("lookupCapital", {"country": "Kenya"})))
    assert raw_chat(replica.url, marker).done
    follow_up = hostile_upstream.requests(marker)[-1]["messages"]
    [assistant] = [m for m in follow_up if m["role"] == "assistant"]
    assert assistant["content"] == "" and assistant["tool_calls"]


def test_an_upstream_that_will_not_stream_with_tools_is_asked_whole_from_then_on(
    make_stack: StackFactory, hostile_upstream: HostileUpstream
) -> None:
    replica = make_stack(upstream=hostile_upstream.url).replicas[0]
    scripted = turn(call("lookupCapital", {"country": "Japan"}), refuse_stream=True)
    marker = hostile_upstream.script(scripted)
    seen = raw_chat(replica.url, marker)
    assert seen.done and "Tokyo" in seen.text
    asked = hostile_upstream.requests(marker)
    assert [r.get("stream") for r in asked] == [True, False, False]  # refused, then whole
    again = hostile_upstream.script(scripted)
    assert raw_chat(replica.url, again).done
    assert [r.get("stream") for r in hostile_upstream.requests(again)] == [False, False]


@pytest.mark.parametrize(
    ("status", "expected", "code"),
    [(429, 429, "upstream_rate_limited"), (400, 400, "upstream_rejected"),
     (503, 502, "upstream_error")],
)  # fmt: skip
def test_an_upstream_http_error_before_the_first_byte_is_a_real_status(
    make_stack: StackFactory,
    hostile_upstream: HostileUpstream,
    status: int,
    expected: int,
    code: str,
) -> None:
    replica = make_stack(upstream=hostile_upstream.url).replicas[0]
    marker = hostile_upstream.script(turn(status=status))
    for stream in (True, False):
        body = {"model": "m", "messages": [{"role": "user", "content": marker}], "stream": stream}
        response = httpx.post(f"{replica.url}/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == expected
        assert response.json()["error"]["code"] == code


def test_an_unreachable_upstream_is_a_502_that_names_no_address(make_stack: StackFactory) -> None:
    port = free_port()  # nothing listens there
    replica = make_stack(upstream=f"http://127.0.0.1:{port}/v1").replicas[0]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = httpx.post(f"{replica.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "could not be reached" in message
    assert "127.0.0.1" not in message and str(port) not in message


def test_the_langchain_adapter_takes_a_name_repeated_on_every_delta_once(
    make_stack: StackFactory, hostile_upstream: HostileUpstream
) -> None:
    replica = make_stack(upstream=hostile_upstream.url, upstream_adapter="langchain").replicas[0]
    marker = hostile_upstream.script(
        turn(call("getStringLength", {"text": "hello"}), repeat_name=True)
    )
    held = HeldStream(replica.url, marker)
    approval = held.wait_pending()
    assert [c["name"] for c in approval["tool_calls"]] == ["getStringLength"]
    assert decide(replica.url, approval["id"], "approve").status_code == 200
    assert held.wait().events_of("result")[0]["content"] == "5"

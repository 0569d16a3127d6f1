"""Signed webhooks: what a real receiver (uvicorn in a thread) gets, verifies and is re-sent."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from core.settings import WebhookTarget
from examples.webhook_receiver import create_app, verify_request
from gateway.webhooks import USER_AGENT, WebhookSender, sign, verify
from tests.clients import HeldStream, decide
from tests.conftest import StackFactory
from tests.processes import free_port
from tests.receivers import (
    SECRET,
    SESSION,
    Receiver,
    receiver_fixture,  # noqa: F401 - the `receiver` fixture
    serve_in_thread,
)

SenderFactory = Callable[..., WebhookSender]


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The fields of each `event` logged (structlog's events reach `logging` as dicts)."""
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg["event"] == event]


@pytest.fixture
async def make_sender() -> AsyncIterator[SenderFactory]:
    """Started senders with millisecond backoffs, stopped at the end of the test."""
    senders: list[WebhookSender] = []

    def build(*targets: WebhookTarget, max_attempts: int = 5, **options: Any) -> WebhookSender:
        options = {"base_delay_s": 0.001, "max_delay_s": 0.01, **options}
        sender = WebhookSender(list(targets), max_attempts, **options)
        senders.append(sender)
        return sender

    yield build
    for sender in senders:
        await sender.stop(grace_s=0)


# --- the wire format ---------------------------------------------------------------------------


async def test_event_arrives_signed_with_its_headers(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    sender = make_sender(receiver.target("/hook"))
    await sender.start()
    event_id = sender.emit("approval.requested", SESSION)
    await sender.stop(grace_s=10)

    assert event_id is not None and event_id.startswith("evt_") and len(event_id) == 4 + 32
    [received] = receiver.requests
    assert received.signed
    assert received.headers["content-type"] == "application/json"
    assert received.headers["x-gateway-event-id"] == event_id
    assert received.headers["x-gateway-event-type"] == "approval.requested"
    assert received.headers["user-agent"] == USER_AGENT
    assert received.headers["x-gateway-signature"].startswith("t=")
    event = received.event
    assert event["id"] == event_id and event["type"] == "approval.requested"
    assert event["data"] == SESSION
    assert isinstance(event["created"], int) and abs(event["created"] - time.time()) < 60
    assert (sender.delivered, sender.failed, sender.pending) == (1, 0, 0)


async def test_tampered_body_or_wrong_secret_fails_verification(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    sender = make_sender(receiver.target("/hook"))
    await sender.start()
    sender.emit("approval.decided", {"id": "ses_1", "status": "approved"})
    await sender.stop(grace_s=10)

    [received] = receiver.requests
    tampered = received.body.replace(b"approved", b"rejected")
    assert tampered != received.body
    assert verify_request(SECRET, received.headers, received.body)
    assert not verify_request(SECRET, received.headers, tampered)
    assert not verify_request(b"another-secret", received.headers, received.body)
    header = received.headers["x-gateway-signature"]
    assert verify(SECRET, header, received.body)
    assert not verify(SECRET, header, tampered)
    assert not verify(b"another-secret", header, received.body)


@pytest.mark.parametrize("age_s", [301, -301, 3600])
def test_timestamp_outside_tolerance_fails(age_s: int) -> None:
    body = b'{"id": "evt_1"}'
    stale = sign(SECRET, int(time.time()) - age_s, body)
    assert not verify_request(SECRET, {"X-Gateway-Signature": stale}, body)
    assert not verify(SECRET, stale, body)


def test_timestamp_within_tolerance_passes() -> None:
    body = b'{"id": "evt_1"}'
    recent = sign(SECRET, int(time.time()) - 200, body)
    assert verify_request(SECRET, {"X-Gateway-Signature": recent}, body)
    assert verify(SECRET, sign(SECRET, 1000, body), body, tolerance_s=300, now=1300)
    assert not verify(SECRET, sign(SECRET, 1000, body), body, tolerance_s=300, now=1301)
    assert not verify(SECRET, sign(SECRET, 1301, body), body, tolerance_s=300, now=1000)


def test_any_of_several_signatures_verifies_during_key_rotation() -> None:
    body = b'{"id": "evt_1"}'
    now = int(time.time())
    old_key = sign(b"old-secret", now, body).partition(",")[2]
    new_key = sign(SECRET, now, body).partition(",")[2]
    header = f"t={now},{old_key},{new_key}"
    assert verify(SECRET, header, body) and verify(b"old-secret", header, body)
    assert verify_request(SECRET, {"X-Gateway-Signature": header}, body)
    assert not verify(b"third-secret", header, body)


@pytest.mark.parametrize(
    "header",
    ["", "garbage", "v1=abc", "t=abc,v1=abc", "t=1,t=2,v1=abc", "t=" + "9" * 5000 + ",v1=a", "t=1"],
)
def test_malformed_signature_header_is_rejected_not_raised(header: str) -> None:
    assert not verify(SECRET, header, b"{}", now=1)
    assert not verify_request(SECRET, {"X-Gateway-Signature": header}, b"{}")


def test_signature_is_hmac_of_timestamp_dot_body() -> None:
    # The vector in docs/webhooks.md, from `openssl dgst -sha256 -hmac secret`.
    assert sign(b"secret", 1700000000, b'{"id":"evt_1"}') == (
        "t=1700000000,v1=af784f27423c462e20039559cd4264140f7b7ed4c9090e26fd663faa5eeb8dda"
    )


# --- retries -----------------------------------------------------------------------------------


async def test_server_errors_are_retried_until_delivered_once(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    receiver.answer("/flaky", 500, 500, 200)
    sender = make_sender(receiver.target("/flaky"))
    await sender.start()
    event_id = sender.emit("approval.requested", SESSION)
    await sender.stop(grace_s=10)

    attempts = receiver.at("/flaky")
    assert len(attempts) == 3
    assert {a.headers["x-gateway-event-id"] for a in attempts} == {event_id}
    assert all(a.signed for a in attempts)
    assert len({a.body for a in attempts}) == 1
    assert (sender.delivered, sender.failed) == (1, 0)


async def test_client_error_is_not_retried(
    receiver: Receiver, make_sender: SenderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answer("/strict", 400)
    sender = make_sender(receiver.target("/strict"))
    await sender.start()
    sender.emit("approval.requested", SESSION)
    await sender.stop(grace_s=10)

    assert len(receiver.at("/strict")) == 1
    assert (sender.delivered, sender.failed, sender.pending) == (0, 1, 0)
    assert [e["status"] for e in logged(caplog, "webhook_refused")] == [400]


@pytest.mark.parametrize("status", [503, 429, 408])
async def test_max_attempts_is_respected(
    receiver: Receiver, make_sender: SenderFactory, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    receiver.answer("/down", status)
    sender = make_sender(receiver.target("/down"), max_attempts=3)
    await sender.start()
    sender.emit("approval.requested", SESSION)
    await sender.stop(grace_s=10)

    assert len(receiver.at("/down")) == 3
    assert (sender.delivered, sender.failed, sender.pending) == (0, 1, 0)
    given_up = logged(caplog, "webhook_given_up")
    assert [(e["attempts"], e["reason"]) for e in given_up] == [(3, f"HTTP {status}")]


async def test_network_errors_are_retried(
    make_sender: SenderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    nobody = WebhookTarget(url=f"http://127.0.0.1:{free_port()}/hook", secret=SecretStr("s"))
    sender = make_sender(nobody, max_attempts=2)
    await sender.start()
    sender.emit("approval.requested", SESSION)
    await sender.stop(grace_s=10)

    assert (sender.delivered, sender.failed) == (0, 1)
    [given_up] = logged(caplog, "webhook_given_up")
    assert given_up["attempts"] == 2 and given_up["reason"].startswith("ConnectError")


async def test_retry_after_seconds_are_honoured(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    receiver.answer("/busy", 429, 200, headers={"Retry-After": "1"})
    sender = make_sender(receiver.target("/busy"), max_delay_s=5)
    await sender.start()
    sender.emit("approval.requested", SESSION)
    await sender.stop(grace_s=10)

    first, second = receiver.at("/busy")
    assert second.at - first.at >= 0.95  # the backoff alone would be a few milliseconds
    assert sender.delivered == 1


async def test_a_retrying_target_does_not_hold_up_the_others(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    receiver.answer("/down", 503, headers={"Retry-After": "30"})
    down = receiver.target("/down", events=["approval.requested"])
    up = receiver.target("/up", events=["approval.decided"])
    sender = make_sender(down, up, max_delay_s=60)
    await sender.start()
    for _ in range(20):  # more than the delivery tasks, all waiting to retry
        sender.emit("approval.requested", SESSION)
    decided = sender.emit("approval.decided", SESSION)
    await sender.stop(grace_s=1)

    assert [r.headers["x-gateway-event-id"] for r in receiver.at("/up")] == [decided]
    assert len(receiver.at("/down")) == 20
    assert (sender.delivered, sender.dropped, sender.pending) == (1, 20, 0)


# --- emit --------------------------------------------------------------------------------------


async def test_emit_never_waits_for_a_delivery(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    sender = make_sender(receiver.target("/hook"))
    await sender.start()
    ids = [sender.emit("approval.requested", {"n": n}) for n in range(1000)]
    # The receiver runs in its own thread: a delivery made inside emit() would be recorded.
    assert receiver.requests == []
    assert (sender.delivered, sender.pending) == (0, 1000)

    await sender.stop(grace_s=60)
    assert sender.delivered == 1000
    assert {r.headers["x-gateway-event-id"] for r in receiver.requests} == set(ids)


async def test_only_subscribed_targets_get_an_event(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    everything = receiver.target("/all")
    decisions = receiver.target("/decisions", events=["approval.decided"])
    sender = make_sender(everything, decisions)
    await sender.start()
    requested = sender.emit("approval.requested", SESSION)
    decided = sender.emit("approval.decided", SESSION)
    unwanted = sender.emit("approval.expired", SESSION)
    await sender.stop(grace_s=10)

    assert unwanted is None
    assert {r.event["id"] for r in receiver.at("/all")} == {requested, decided}
    assert len(receiver.at("/all")) == 2
    assert [r.event["id"] for r in receiver.at("/decisions")] == [decided]
    assert sender.delivered == 3


async def test_full_queue_drops_with_a_warning(
    make_sender: SenderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    target = WebhookTarget(url="http://127.0.0.1:9/", secret=SecretStr("s"))
    sender = make_sender(target, queue_size=2)  # not started: nothing leaves the queue
    first, second = sender.emit("approval.requested", {}), sender.emit("approval.requested", {})
    with caplog.at_level(logging.WARNING):
        third = sender.emit("approval.requested", {})

    assert first is not None and second is not None and third is None
    assert (sender.pending, sender.dropped) == (2, 1)
    assert [e["reason"] for e in logged(caplog, "webhook_dropped")] == ["queue full"]


def test_emit_with_unserializable_data_returns_none() -> None:
    target = WebhookTarget(url="http://127.0.0.1:9/", secret=SecretStr("s"))
    sender = WebhookSender([target], 3)
    assert sender.emit("approval.requested", {"when": object()}) is None
    assert sender.pending == 0


async def test_stop_gives_up_on_what_grace_does_not_cover(
    receiver: Receiver, make_sender: SenderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answer("/down", 503, headers={"Retry-After": "60"})
    sender = make_sender(receiver.target("/down"), max_delay_s=60)
    await sender.start()
    sender.emit("approval.requested", SESSION)
    sender.emit("approval.decided", SESSION)
    started = time.monotonic()
    await sender.stop(grace_s=0.5)

    assert time.monotonic() - started < 5
    assert (sender.pending, sender.dropped, sender.delivered) == (0, 2, 0)
    assert [e["deliveries"] for e in logged(caplog, "webhooks_dropped_at_shutdown")] == [2]
    assert sender.emit("approval.requested", SESSION) is None


# --- the example receiver ----------------------------------------------------------------------


async def test_example_receiver_handles_each_event_once(make_sender: SenderFactory) -> None:
    handled: list[dict[str, Any]] = []
    with serve_in_thread(create_app(SECRET, handled.append)) as url:
        target = WebhookTarget(url=f"{url}/webhooks", secret=SecretStr(SECRET.decode()))
        sender = make_sender(target)
        await sender.start()
        event_id = sender.emit("approval.requested", SESSION)
        await sender.stop(grace_s=10)

        body = orjson.dumps({"id": event_id, "type": "approval.requested", "data": {}})
        signature = sign(SECRET, int(time.time()), body)
        async with httpx.AsyncClient(base_url=url) as client:
            repeat = await client.post(
                "/webhooks", content=body, headers={"X-Gateway-Signature": signature}
            )
            forged = await client.post(
                "/webhooks", content=body, headers={"X-Gateway-Signature": signature + "0"}
            )

    assert sender.delivered == 1
    assert [event["id"] for event in handled] == [event_id]
    assert repeat.status_code == 204  # acknowledged, not handled twice
    assert forged.status_code == 401


def test_the_gateway_sends_requested_and_decided_events(
    receiver: Receiver, make_stack: StackFactory
) -> None:
    """End to end: a gateway process signs and posts both events to a real receiver."""
    targets = [{"url": f"{receiver.url}/hook", "secret": SECRET.decode()}]
    replica = make_stack(webhooks=json.dumps(targets)).replicas[0]
    held = HeldStream(replica.url, "use getStringLength on 'hooked'")
    approval = held.wait_pending()
    assert decide(replica.url, approval["id"], "reject", "not now").status_code == 200
    held.wait()
    deadline = time.monotonic() + 10
    while len(receiver.at("/hook")) < 2:
        assert time.monotonic() < deadline, "the events did not arrive"
        time.sleep(0.05)
    requested, decided = (r.event for r in receiver.at("/hook"))
    assert all(r.signed for r in receiver.at("/hook"))
    assert requested["type"] == "approval.requested"
    assert requested["data"]["id"] == approval["id"] and requested["data"]["status"] == "pending"
    assert decided["type"] == "approval.decided"
    assert decided["data"]["session"]["status"] == "rejected"
    assert decided["data"]["tool_call_ids"] == [approval["tool_calls"][0]["id"]]
    assert decided["data"]["complete"] is True
    assert requested["id"] != decided["id"]

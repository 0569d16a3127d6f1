"""The web inbox (`/inbox`) in a real browser: Playwright driving Debian's Chromium (by its
path; nothing is downloaded), against two gateway replicas behind the shipped nginx
configuration, with real held client streams.

Screenshots at 1440 and 375 pixels wide are saved to `build/screenshots/`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright.sync_api import Browser, expect

from tests.browser import (
    KEYS,
    LIVE_S,
    SLOW_PERSON_S,
    bearer,
    browser_fixture,  # noqa: F401 - the `browser` fixture
    browser_stack,
    card,
    screenshot,
    session,
    signed_in,
)
from tests.clients import HeldStream
from tests.processes import RedisServer


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where payInvoice records what ran, with what."""
    return tmp_path_factory.mktemp("inbox-ledger") / "ledger.jsonl"


def ran(ledger: Path, invoice: str) -> list[dict[str, Any]]:
    """The payInvoice runs of one invoice, as the tool recorded them."""
    lines = ledger.read_text().splitlines() if ledger.exists() else []
    runs = [orjson.loads(line)["arguments"] for line in lines]
    return [arguments for arguments in runs if arguments["invoice"] == invoice]


@pytest.fixture(scope="module")
def site(
    redis_server: RedisServer, offline_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Two replicas and a worker behind nginx; the balancer's URL."""
    stack = browser_stack(redis_server, offline_model, tmp_path_factory.mktemp("inbox"), "inbox")
    try:
        yield stack.add_nginx()
    finally:
        stack.stop()


def hold(url: str, prompt: str) -> tuple[HeldStream, dict[str, Any]]:
    """A streamed chat by the requester, held for a decision; its pending session."""
    held = HeldStream(url, prompt, api_key=KEYS["carol"][0])
    return held, held.wait_pending()


def test_a_held_stream_shows_up_and_approving_it_in_the_page_resumes_it(
    browser: Browser, site: str, ledger: Path
) -> None:
    page = signed_in(browser, site, "alice")
    held, approval = hold(site, f"use payInvoice on '{ledger}' 'INV-7' 250")
    item = card(page, approval["id"])
    expect(item).to_be_visible()
    expect(item.locator(".tool")).to_have_text("payInvoice")
    expect(item.locator('tr[data-argument="amount"] td')).to_have_text("250")
    expect(item.locator(".requester")).to_have_text("carol")
    expect(item.locator(".user-message")).to_contain_text(f"use payInvoice on '{ledger}'")
    expect(item.locator(".policy-reason")).to_contain_text("policy")
    expect(item.locator(".countdown")).to_have_text(re.compile(r"expires in \d+:\d\d"))
    item.locator("button.exact-toggle").click()
    expect(item.locator("pre.exact")).to_contain_text('"invoice": "INV-7"')
    screenshot(page, "inbox-1440.png")
    time.sleep(SLOW_PERSON_S)  # the person reads; the client's stream is held meanwhile
    assert held.result is None and held.error is None, "the held stream ended early"
    item.locator("button.approve").click()
    expect(item).to_have_count(0)
    result = held.wait()
    [executed] = result.events_of("result")
    assert "INV-7" in str(executed) and result.finish_reason == "stop"
    assert session(site, approval["id"])["tool_calls"][0]["decision"]["actor"] == "alice"
    assert ran(ledger, "INV-7") == [{"ledger": str(ledger), "invoice": "INV-7", "amount": 250}]


def test_two_approvers_see_each_others_decisions_live(browser: Browser, site: str) -> None:
    alice = signed_in(browser, site, "alice")
    bob = signed_in(browser, site, "bob")
    held, approval = hold(
        site, "use getStringLength on 'first' and use getStringLength on 'second'"
    )
    first, second = (call["id"] for call in approval["tool_calls"])
    for page in (alice, bob):
        expect(card(page, approval["id"]).locator(".call")).to_have_count(2)
    screenshot(alice, "inbox-two-calls-1440.png")
    time.sleep(SLOW_PERSON_S)
    alice.locator(f'.call[data-call="{first}"] button.approve').click()
    # Bob's card updates within a second: the call shows who approved it, the other waits.
    decided = card(bob, approval["id"]).locator(f'.call[data-call="{first}"] .decided')
    expect(decided).to_have_text("approved by alice", timeout=LIVE_S * 1000)
    expect(
        card(bob, approval["id"]).locator(f'.call[data-call="{second}"] .actions')
    ).to_be_visible()
    expect(bob.locator(".toast").first).to_contain_text("alice approved getStringLength")
    bob_call = card(bob, approval["id"]).locator(f'.call[data-call="{second}"]')
    bob_call.locator("button.reject").click()
    bob_call.locator("textarea.reason").fill("not this one")
    bob_call.locator("textarea.reason").press("Enter")
    expect(card(alice, approval["id"])).to_have_count(0, timeout=LIVE_S * 1000)
    result = held.wait()
    assert result.finish_reason == "stop"
    calls = {c["id"]: c for c in session(site, approval["id"])["tool_calls"]}
    assert calls[first]["decision"]["actor"] == "alice"
    assert calls[second]["decision"] == {
        **calls[second]["decision"],
        "actor": "bob",
        "reason": "not this one",
    }
    alice.locator("#tab-history").click()
    history = alice.locator(f'.history-item[data-session="{approval["id"]}"]')
    expect(history).to_contain_text("approved by alice")
    expect(history).to_contain_text("rejected by bob — “not this one”")


def test_a_concurrent_decision_is_explained_not_shown_as_a_failure(
    browser: Browser, site: str
) -> None:
    page = signed_in(browser, site, "alice")
    page.route("**/v1/approvals/events", lambda route: route.abort())  # the page misses it
    held, approval = hold(site, "use getStringLength on 'race'")
    page.reload()  # the list shows the session; the feed is cut, so the card stays
    item = card(page, approval["id"])
    expect(item).to_be_visible()
    bob = httpx.post(
        f"{site}/v1/approvals/{approval['id']}/decision",
        json={"decision": "reject", "reason": "bob was first"},
        headers=bearer("bob"),
    )
    assert bob.status_code == 200
    item.locator("button.approve").click()
    expect(page.locator(".toast").last).to_contain_text(
        "Already rejected by bob: “bob was first”: your decision was not needed."
    )
    expect(item).to_have_count(0)
    expect(page.locator(".notice.error")).to_have_count(0)
    held.wait()


def test_editing_with_invalid_arguments_shows_the_field_error_and_changes_nothing(
    browser: Browser, site: str, ledger: Path
) -> None:
    page = signed_in(browser, site, "alice")
    held, approval = hold(site, f"use payInvoice on '{ledger}' 'INV-8' 300")
    item = card(page, approval["id"])
    item.locator("button.edit").click()
    amount = item.locator('.field[data-name="amount"]')
    amount.locator("textarea").fill('"lots"')  # valid JSON, wrong type: the server says so
    item.locator("button.confirm-edit").click()
    expect(amount.locator(".field-error")).to_contain_text("arguments.amount")
    expect(amount).to_have_class(re.compile(r"\binvalid\b"))
    after = session(site, approval["id"])
    assert after["status"] == "pending" and after["tool_calls"][0]["status"] == "pending"
    assert after["tool_calls"][0]["arguments"]["amount"] == 300
    amount.locator("textarea").fill("not json")  # caught in the page, nothing sent
    item.locator("button.confirm-edit").click()
    expect(amount.locator(".field-error")).to_have_text("amount: not valid JSON")
    amount.locator("textarea").fill("120")
    item.locator("button.confirm-edit").click()
    expect(item).to_have_count(0)
    result = held.wait()
    assert "120" in str(result.events_of("result"))
    decision = session(site, approval["id"])["tool_calls"][0]["decision"]
    assert decision["decision"] == "edit" and decision["arguments"]["amount"] == 120
    assert ran(ledger, "INV-8") == [{"ledger": str(ledger), "invoice": "INV-8", "amount": 120}]


def test_hostile_strings_render_as_text(browser: Browser, site: str) -> None:
    page = signed_in(browser, site, "alice")
    hostile = "<img src=x onerror=alert(1)>"
    held, approval = hold(site, f"use getStringLength on '{hostile}'")
    item = card(page, approval["id"])
    expect(item.locator('tr[data-argument="text"] td')).to_have_text(hostile)
    expect(item.locator(".user-message .text")).to_contain_text(hostile)
    assert item.locator("img").count() == 0, "model text became markup"
    headers = httpx.get(f"{site}/inbox").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    screenshot(page, "inbox-hostile-1440.png")
    item.locator("button.reject").click()
    item.locator("textarea.reason").fill("no")
    item.locator("button.confirm-reject").click()
    expect(item).to_have_count(0)
    held.wait()


def test_the_keyboard_path(browser: Browser, site: str) -> None:
    page = signed_in(browser, site, "alice")
    first_held, first = hold(site, "use getStringLength on 'keyboard one'")
    second_held, second = hold(site, "use getStringLength on 'keyboard two'")
    expect(card(page, first["id"])).to_be_visible()
    expect(card(page, second["id"])).to_be_visible()
    page.locator("body").click(position={"x": 5, "y": 300})
    # Newest first: j moves down to the older session's call, k back up.
    page.keyboard.press("j")
    page.keyboard.press("k")
    expect(card(page, second["id"]).locator(".call.selected")).to_have_count(1)
    page.keyboard.press("j")
    expect(card(page, first["id"]).locator(".call.selected")).to_have_count(1)
    page.keyboard.press("e")
    expect(card(page, first["id"]).locator(".editor")).to_be_visible()
    page.keyboard.press("Escape")
    expect(card(page, first["id"]).locator(".editor")).to_have_count(0)
    page.keyboard.press("r")
    page.keyboard.type("typed, not clicked")
    page.keyboard.press("Enter")
    expect(card(page, first["id"])).to_have_count(0)
    page.keyboard.press("k")
    page.keyboard.press("a")
    expect(card(page, second["id"])).to_have_count(0)
    assert first_held.wait().finish_reason == second_held.wait().finish_reason == "stop"
    assert session(site, first["id"])["tool_calls"][0]["decision"]["reason"] == "typed, not clicked"
    assert session(site, second["id"])["tool_calls"][0]["decision"]["decision"] == "approve"


def test_phone_width_and_the_key_kept_in_the_tab_only(
    browser: Browser, site: str, ledger: Path
) -> None:
    page = signed_in(browser, site, "bob", width=375)
    sent: list[tuple[str, str]] = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization", ""))))
    held, approval = hold(site, f"use payInvoice on '{ledger}' 'INV-9' 75")
    item = card(page, approval["id"])
    expect(item.locator("button.approve")).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways at 375 px ({width} px wide)"
    screenshot(page, "inbox-375.png")
    storage = page.evaluate("[sessionStorage.length, localStorage.length, document.cookie]")
    assert storage == [1, 0, ""]
    item.locator("button.approve").click()
    expect(item).to_have_count(0)
    held.wait()
    api = [(u, auth) for u, auth in sent if "/v1/" in u]
    assert api and all(auth == f"Bearer {KEYS['bob'][0]}" for _, auth in api)
    assert not any(KEYS["bob"][0] in u for u, _ in sent), "the key went into a URL"


def test_a_wrong_key_is_refused_at_sign_in(browser: Browser, site: str) -> None:
    page = browser.new_page()
    page.goto(f"{site}/inbox")
    page.fill("#key", "sk-nobody")
    page.press("#key", "Enter")
    expect(page.locator("#signin-error")).to_have_text("This key is not known to the gateway.")
    page.fill("#key", KEYS["carol"][0])  # a requester may not approve
    page.press("#key", "Enter")
    expect(page.locator("#signin-error")).to_have_text(
        "This key may not see approvals: it needs the approver or admin role."
    )
    expect(page.locator("#live")).to_be_hidden()


@pytest.fixture(scope="module")
def short_deadline(
    redis_server: RedisServer, offline_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    stack = browser_stack(
        redis_server,
        offline_model,
        tmp_path_factory.mktemp("inbox-deadline"),
        "inbox-deadline",
        approval_timeout_s="5",
    )
    try:
        yield stack.add_nginx()
    finally:
        stack.stop()


def test_the_countdown_reaches_expired_when_the_session_expires(
    browser: Browser, short_deadline: str
) -> None:
    page = signed_in(browser, short_deadline, "alice")
    held, approval = hold(short_deadline, "use getStringLength on 'too late'")
    item = card(page, approval["id"])
    expect(item.locator(".countdown")).to_have_text(re.compile(r"expires in 0:0[0-5]"))
    expect(item.locator(".countdown")).to_have_text("expired", timeout=8000)
    expect(item.locator("button.approve")).to_be_disabled()
    # The gateway expires it too: the feed's `expired` takes the card away.
    expect(item).to_have_count(0, timeout=10000)
    assert held.wait().finish_reason == "stop"
    after = session(short_deadline, approval["id"])
    assert after["status"] == "completed" and after["tool_calls"][0]["status"] == "expired"

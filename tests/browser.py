"""Shared by the inbox's browser tests: Debian's Chromium through Playwright (launched by
path, nothing downloaded), API keys of a tenant's approvers and requester, a stack of two
replicas behind nginx, and helpers to sign in, find a card and save a screenshot."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright.sync_api import Browser, Locator, Page, Playwright, expect, sync_playwright

from core.audit import FOLLOW_POLL_S
from gateway.auth import hash_key
from tests.conftest import Stack
from tests.processes import ROOT, RedisServer

SCREENSHOTS = ROOT / "build" / "screenshots"
HEARTBEAT_S = 1.0
SLOW_PERSON_S = 2.5 * HEARTBEAT_S
"""How long a person looks before deciding: longer than two heartbeats."""
LIVE_S = 1.0 + FOLLOW_POLL_S
"""A colleague's decision shows on the page within a second (plus the feed's poll)."""

KEYS = {
    "alice": ("sk-alice-approver", "acme", ["approver"]),
    "bob": ("sk-bob-approver", "acme", ["approver"]),
    "carol": ("sk-carol-requester", "acme", ["requester"]),
}


def keys_setting() -> str:
    return orjson.dumps(
        [
            {"sha256": hash_key(key), "name": name, "tenant": tenant, "roles": roles}
            for name, (key, tenant, roles) in KEYS.items()
        ]
    ).decode()


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Browser]:
    """`browser`: Debian's Chromium, one per test module."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable is not None, "Debian's chromium is needed (make test installs it)"
    with sync_playwright() as playwright:
        yield _launch(playwright, executable)


def _launch(playwright: Playwright, executable: str) -> Browser:
    return playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])


def browser_stack(
    redis: RedisServer, model: str, workdir: Path, prefix: str, **settings: str
) -> Stack:
    overrides = {
        "GATEWAY_API_KEYS": keys_setting(),
        "GATEWAY_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        **{f"GATEWAY_{name.upper()}": value for name, value in settings.items()},
    }
    stack = Stack(redis, model, workdir, prefix, overrides)
    stack.add_worker()
    stack.add_replica()
    stack.add_replica()
    return stack


def signed_in(browser: Browser, url: str, who: str, width: int = 1440) -> Page:
    """A new browser context (its own tab storage) signed in as `who`."""
    context = browser.new_context(viewport={"width": width, "height": 1000})
    page = context.new_page()
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
    page.goto(f"{url}/inbox")
    page.fill("#key", KEYS[who][0])
    page.press("#key", "Enter")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#principal")).to_have_text(f"{who} · {KEYS[who][1]}")
    return page


def card(page: Page, session_id: str) -> Locator:
    return page.locator(f'.session[data-session="{session_id}"]')


def session(url: str, session_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/approvals/{session_id}", headers=bearer("alice"))
    assert response.status_code == 200
    found: dict[str, Any] = response.json()
    return found


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)

"""The dashboard in headless Chromium: sign in, spend bars and their colours, forecast, blocked calls, kill switch."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from admin_helpers import ADMIN_CONFIG, TOKENS, build_guard, spend

from costguard import BudgetExceeded, Guard
from costguard.admin import app
from costguard.runkeys import RunKeys

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("COSTGUARD_TEST_CHROMIUM", "/usr/bin/chromium")


def chromium() -> str:
    if shutil.which(CHROMIUM):
        return CHROMIUM
    message = f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver (.ci/run does this)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; browser tests may not skip in CI")
    pytest.skip(message)


@pytest.fixture
def dashboard_guard() -> Iterator[Guard]:
    guard = build_guard()
    spend(guard, "doc_search", 49.0, customer="globex")  # globex: $50 of $50
    with pytest.raises(BudgetExceeded):
        guard.reserve("doc_search", customer="globex", estimate_usd=0.5)
    guard.flush()
    RunKeys(guard).issue({"run": "r-dash"}, {"total_usd": 2})
    yield guard
    guard.close()


@pytest.fixture
def server(dashboard_guard: Guard) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = uvicorn.Config(app(dashboard_guard, admin=ADMIN_CONFIG), host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    for _ in range(200):
        if instance.started:
            break
        threading.Event().wait(0.05)
    assert instance.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/"
    instance.should_exit = True
    thread.join(timeout=10)


def bars(page: Any) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for item in page.query_selector_all(".ceiling"):
        key = (item.get_attribute("data-labels"), item.get_attribute("data-period"))
        fill = item.query_selector(".fill")
        out[key] = {
            "level": item.get_attribute("data-level"),
            "class": fill.get_attribute("class"),
            "width": float(fill.evaluate("node => node.style.width").rstrip("%")),
            "text": item.inner_text(),
        }
    return out


def answer(page: Any, replies: list[str], action: Callable[[], None]) -> None:
    """Run `action`, accepting the prompts it opens with `replies` in order."""
    pending = list(replies)

    def reply(dialog: Any) -> None:
        dialog.accept(pending.pop(0))

    page.on("dialog", reply)
    try:
        action()
    finally:
        page.remove_listener("dialog", reply)


def month_or_day_limit(guard: Guard, period: str) -> float:
    rows = guard.status(feature="support_agent").ceilings
    return next(r.limit for r in rows if dict(r.labels) == {"feature": "support_agent"} and r.period == period)


def test_dashboard_in_chromium(server: str, dashboard_guard: Guard, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server)
            assert page.is_visible("#login")
            assert not page.is_visible("#dashboard")

            # A wrong token: back to the sign-in form with the API's message.
            page.fill("#token", "not-a-token-" + "x" * 20)
            page.click("#signin")
            page.wait_for_selector("#message:not([hidden])")
            assert "not one of the configured admin tokens" in page.inner_text("#message")
            assert page.is_visible("#login")

            page.fill("#token", TOKENS["operator"])
            page.click("#signin")
            page.wait_for_selector("body[data-loaded='true']")
            assert page.evaluate("sessionStorage.getItem('costguard.token')") == TOKENS["operator"]
            assert page.evaluate("localStorage.length") == 0

            shown = bars(page)
            assert len(shown) == len(dashboard_guard.status().ceilings)
            day = shown[("feature=support_agent", "day")]
            assert day["level"] == "warn"  # $9.50 of $10
            assert "level-warn" in day["class"]
            assert day["width"] == 95.0
            assert "$9.50 of $10.00" in day["text"]
            globex = shown[("customer=globex", "month")]
            assert (globex["level"], globex["width"]) == ("over", 100.0)
            assert "level-over" in globex["class"]
            acme = shown[("customer=acme", "month")]
            assert acme["level"] == "ok"
            assert "level-ok" in acme["class"]

            forecast_rows = page.query_selector_all("#forecast svg g[data-ceiling]")
            assert len(forecast_rows) == len(dashboard_guard.forecast().ceilings)
            assert page.query_selector_all("#forecast svg line.limit")

            blocked = page.inner_text("#blocked tbody")
            assert "customer=globex" in blocked
            assert "feature=doc_search" in blocked

            # Run keys: listed (never the key), and an operator revokes one from its row.
            keys = page.inner_text("#keys tbody")
            assert "run=r-dash" in keys and "total_usd 2" in keys and "active" in keys
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("#keys tr[data-status='active'] button.revoke")
            page.wait_for_selector("#keys tr[data-status='revoked']")
            assert dashboard_guard.store.control().keys[0].revoked_at is not None

            # Change a limit from its row: an operator may lower it, not raise it.
            day_row = "#ceilings .ceiling[data-labels='feature=support_agent'][data-period='day'] button.change"
            answer(page, ["9.75", "cost review"], lambda: page.click(day_row))
            page.wait_for_selector("#message:has-text('$10.00 → $9.75')")
            assert month_or_day_limit(dashboard_guard, "day") == 9.75
            answer(page, ["50", "launch"], lambda: page.click(day_row))
            page.wait_for_selector("#message.error")
            assert "may lower limits but not raise them" in page.inner_text("#message")
            assert month_or_day_limit(dashboard_guard, "day") == 9.75

            assert page.get_attribute("#killswitch-state", "data-active") == "false"
            page.once("dialog", lambda dialog: dialog.accept("incident 99: runaway agent"))
            page.click("#killswitch-activate")
            page.wait_for_selector("#killswitch-state[data-active='true']")
            assert "incident 99" in page.inner_text("#killswitch-list")
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

            # Turning it off needs a reason, as turning it on does.
            page.once("dialog", lambda dialog: dialog.accept("  "))
            page.click("#killswitch-deactivate")
            page.wait_for_selector("#message.error")
            assert "a reason is required" in page.inner_text("#message")

            # An operator can't turn it off again: the API's 403 is shown.
            page.once("dialog", lambda dialog: dialog.accept("all clear"))
            page.click("#killswitch-deactivate")
            page.locator("#message.error", has_text="admin role").wait_for()
            assert errors == []
        finally:
            browser.close()

    active = [(dict(s.scope), s.reason, s.actor) for s in dashboard_guard.killswitch.status().active]
    assert active == [({}, "incident 99: runaway agent", "api:ops-operator")]
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000

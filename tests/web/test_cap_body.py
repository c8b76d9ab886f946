"""The 429 every web integration sends carries `code: cap_exhausted` and `cap_usd` (the seeds' clients read them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from costguard import BudgetExceeded, _web
from costguard.config import load_config
from helpers import FakeClock, make_guard, usd_ceiling


def test_the_429_body_names_the_cap_in_usd() -> None:
    guard = make_guard(usd_ceiling({"customer": "*"}, day=0.05))
    guard.reserve("chat", estimate_usd=0.05, customer="acme").commit()
    with pytest.raises(BudgetExceeded) as caught:
        guard.reserve("chat", estimate_usd=0.01, customer="acme")
    reply = _web.blocked_reply(caught.value)
    assert reply.status == 429
    assert (reply.body["code"], reply.body["reason"]) == ("cap_exhausted", "budget_exceeded")
    assert reply.body["cap_usd"] == 0.05 == reply.body["limit_usd"]
    assert reply.body["spent_usd"] == 0.05
    assert dict(reply.headers)["Retry-After"]


def test_an_expired_run_says_so_and_has_no_retry_after(tmp_path: Path) -> None:
    """A run past its `ttl` never comes back: the 429 says `expired`, with no `Retry-After`."""
    (tmp_path / "costguard.yaml").write_text(
        "store: memory://\nceilings:\n  - match: {run: '*'}\n    total_usd: 5\n    ttl: 1h\n", encoding="utf-8"
    )
    clock = FakeClock()
    guard = load_config(tmp_path / "costguard.yaml", env={}).build(clock=clock)
    guard.reserve("agent", run="r-42", estimate_usd=0.5).commit(0.25)
    clock.advance(3600)
    with pytest.raises(BudgetExceeded) as caught:
        guard.reserve("agent", run="r-42", estimate_usd=0.5)
    reply = _web.blocked_reply(caught.value)
    assert (reply.status, reply.body["code"], reply.body["reason"]) == (429, "cap_exhausted", "expired")
    assert "Retry-After" not in dict(reply.headers)
    assert "has expired" in reply.body["message"]

"""The 429 every web integration sends carries `code: cap_exhausted` and `cap_usd` (the seeds' clients read them)."""

from __future__ import annotations

import pytest

from costguard import BudgetExceeded, _web
from helpers import make_guard, usd_ceiling


def test_the_429_body_names_the_cap_in_usd() -> None:
    guard = make_guard(usd_ceiling({"customer": "*"}, day=0.05))
    guard.reserve("chat", estimate_usd=0.05, customer="acme").commit()
    with pytest.raises(BudgetExceeded) as caught:
        guard.reserve("chat", estimate_usd=0.01, customer="acme")
    reply = _web.blocked_reply(caught.value)
    assert reply.status == 429
    assert reply.body["code"] == "cap_exhausted"
    assert reply.body["cap_usd"] == 0.05 == reply.body["limit_usd"]
    assert reply.body["spent_usd"] == 0.05
    assert dict(reply.headers)["Retry-After"]

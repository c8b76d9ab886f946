"""Alert storms: a per-instance ceiling's alerts are aggregated, and each notifier has a rate limit.

200 customers over a per-customer cap used to be 200 `warn` + 200 `kill` events and 200 PagerDuty
incidents. Now: per ceiling, kind and period bucket, the first alert goes out at once and the rest
of the window as one summary (a count and the instances with the most spend); PagerDuty gets one
incident per ceiling and period, resolved by the next period's first call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from costguard import BudgetExceeded, ConfigError, Event, Guard
from costguard.notify.dispatcher import Dispatcher
from costguard.notify.format import details, headline
from costguard.notify.group import Grouper, wildcard_names
from costguard.notify.pagerduty import PagerDutyNotifier
from costguard.notify.webhook import WebhookNotifier
from costguard.testing import FakeClock, RecordingNotifier
from helpers import make_guard, usd_ceiling
from receivers import Receiver, Reply

PER_CUSTOMER = usd_ceiling({"feature": "chat", "customer": "*"}, day=1.0)
N = 200


@pytest.fixture
def pd() -> Iterator[Receiver]:
    server = Receiver(default=Reply(202, b'{"status":"success"}'))
    yield server
    server.stop()


@pytest.fixture
def hook() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def customer(index: int) -> str:
    return f"c{index:03d}"


def storm(guard: Guard) -> None:
    """Customer i spends $0.80 + i * $0.0005 (a warn at 80 %), then asks $0.50 more: refused (a kill)."""
    for index in range(N):
        spend = (800_000 + index * 500) / 1_000_000
        with guard.reserve("chat", estimate_usd=spend, customer=customer(index)) as r:
            r.commit(spend)
        with pytest.raises(BudgetExceeded):
            guard.reserve("chat", estimate_usd=0.5, customer=customer(index))


def of(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind]


def test_a_storm_of_instances_is_one_alert_and_one_summary_per_kind(pd: Receiver, hook: Receiver) -> None:
    recorder = RecordingNotifier()
    pagerduty = PagerDutyNotifier("R" * 32, events_url=f"{pd.url}/v2/enqueue")
    webhook = WebhookNotifier(hook.url)
    clock = FakeClock("2026-05-12T10:00:00Z")
    guard = make_guard(PER_CUSTOMER, notifiers=[recorder, pagerduty, webhook], clock=clock, alert_group_s=600)
    storm(guard)
    assert guard.flush(10)

    for kind in ("warn", "kill"):
        first, summary = of(recorder.events, kind)  # not 200 of each
        assert (first.instances, summary.instances) == (1, N - 1)  # every instance counted, exactly
        assert first.labels == summary.labels == {"feature": "chat", "customer": "*"}
        assert first.top == ({"labels": {"feature": "chat", "customer": "c000"}, "spent": first.top[0]["spent"]},)
        assert [item["labels"]["customer"] for item in summary.top] == ["c199", "c198", "c197", "c196", "c195"]
        assert first.bucket == summary.bucket == "2026-05-12"
        assert first.dedup_key == summary.dedup_key
    warn_first, warn_summary = of(recorder.events, "warn")
    assert warn_first.top[0]["spent"] == 0.8
    assert [item["spent"] for item in warn_summary.top] == [0.8995, 0.899, 0.8985, 0.898, 0.8975]

    # The texts people read: the first names its customer, the summary counts the rest.
    kill_first, kill_summary = of(recorder.events, "kill")
    assert headline(kill_first) == "chat · customer=c000 hit its day USD limit: calls are blocked"
    assert headline(kill_summary) == "chat · customer=*: 199 more hit their day USD limit: their calls are blocked"
    assert details(kill_summary)[0].startswith("most spend: customer=c199 $0.90, customer=c198 $0.90")
    assert details(kill_summary)[0].endswith("and 194 more")
    assert "limit $1.00 each" in details(kill_summary)

    # PagerDuty: kills only, one incident (one dedup key) for the ceiling and its day.
    triggers = [r.json() for r in pd.wait_for(2)]
    assert [t["event_action"] for t in triggers] == ["trigger", "trigger"]
    assert len({t["dedup_key"] for t in triggers}) == 1
    assert triggers[1]["payload"]["custom_details"]["instances"] == N - 1
    assert triggers[1]["payload"]["summary"].startswith("costguard: chat · customer=*: 199 more hit")

    # The webhook body carries the count and the top instances.
    bodies = [r.json() for r in hook.wait_for(4)]
    assert sorted((b["kind"], b["instances"]) for b in bodies) == [
        ("kill", 1),
        ("kill", N - 1),
        ("warn", 1),
        ("warn", N - 1),
    ]
    assert all(len(b["top"]) <= 5 for b in bodies)

    # A raised limit opens one customer: others may still be blocked, the incident stays open.
    guard.set_limit({"feature": "chat", "customer": "c005"}, period="day", usd=5, reason="approved", actor="ops")
    with guard.reserve("chat", estimate_usd=0.1, customer="c005"):
        pass
    assert guard.flush(10)
    (opened,) = of(recorder.events, "kill_cleared")
    assert (opened.reason, opened.instances) == ("limit raised", 1)
    time.sleep(0.3)
    assert len(pd.requests) == 2

    # The next day's first call from a blocked customer resolves that day's incident.
    clock.set("2026-05-13T09:00:00Z")
    with guard.reserve("chat", estimate_usd=0.1, customer="c007"):
        pass
    assert guard.flush(10)
    resolve = pd.wait_for(3)[2].json()
    assert resolve == {"routing_key": "R" * 32, "event_action": "resolve", "dedup_key": triggers[0]["dedup_key"]}
    cleared = of(recorder.events, "kill_cleared")[-1]
    assert (cleared.reason, cleared.bucket) == ("new period", "2026-05-12")
    guard.close()


def test_summaries_go_out_when_the_window_ends_without_a_flush() -> None:
    recorder = RecordingNotifier()
    guard = make_guard(PER_CUSTOMER, notifier=recorder, alert_group_s=0.3)
    for index in range(5):
        with pytest.raises(BudgetExceeded):
            guard.reserve("chat", estimate_usd=2.0, customer=customer(index))
    deadline = time.monotonic() + 10
    while len(of(recorder.events, "kill")) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [e.instances for e in of(recorder.events, "kill")] == [1, 4]
    guard.close()


def test_a_window_with_news_stays_open_and_a_quiet_one_closes() -> None:
    out: list[Event] = []
    groups = Grouper(out.append, window_s=3600)
    at = datetime(2026, 5, 12, tzinfo=timezone.utc)

    def kill(name: str) -> Event:
        return Event("kill", {"feature": "chat", "customer": name}, at, 1.0, "day", "usd", 1.0, 1.0,
                     ceiling=PER_CUSTOMER.id, bucket="2026-05-12")  # fmt: skip

    assert groups.add(kill("a")) and [e.instances for e in out] == [1]  # the first: at once
    assert groups.add(kill("b")) and len(out) == 1  # held
    groups.flush()
    assert [e.instances for e in out] == [1, 1]
    assert groups.add(kill("c")) and len(out) == 2  # the window saw news: still open, held
    groups._roll(force=False)  # not over yet: nothing
    assert len(out) == 2
    groups.flush()
    assert [e.instances for e in out] == [1, 1, 1]
    for window in groups._windows.values():
        window.ends = 0.0
    groups._roll(force=False)  # over, nothing new: the window closes
    assert not groups._windows
    assert groups.add(kill("d")) and len(out) == 4  # a new window: at once again
    # Alerts about one scope, and kill switch events, pass through.
    assert not groups.add(Event("kill", {"feature": "chat"}, at, 1.0, ceiling="feature=chat"))
    assert not groups.add(Event("killswitch_activated", {"customer": "*"}, at))
    groups.close()


def test_a_literal_star_value_is_not_a_wildcard() -> None:
    star = usd_ceiling({"feature": "chat", "customer": "*"}, day=1.0)
    assert wildcard_names(star.id) == {"customer"}
    assert wildcard_names("customer=%2A,feature=chat") == frozenset()
    assert wildcard_names(None) == frozenset()


def test_without_grouping_every_instance_alerts_on_its_own() -> None:
    recorder = RecordingNotifier()
    guard = make_guard(PER_CUSTOMER, notifier=recorder, alert_group_s=None)
    for index in range(5):
        with pytest.raises(BudgetExceeded):
            guard.reserve("chat", estimate_usd=2.0, customer=customer(index))
    assert guard.flush(10)
    kills = of(recorder.events, "kill")
    assert [(e.instances, e.labels["customer"]) for e in kills] == [(None, customer(i)) for i in range(5)]
    guard.close()


# --------------------------------------------------------------------------------- rate limits
class Counting:
    def __init__(self, per_minute: float | None) -> None:
        self.max_per_minute = per_minute
        self.seen: list[Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.seen.append(event)


def switch(index: int) -> Event:
    return Event("killswitch_activated", {"feature": f"f{index}"}, datetime.now(timezone.utc), reason="x")


def test_each_notifier_has_its_own_rate_limit() -> None:
    limited, free = Counting(60), Counting(None)
    dispatcher = Dispatcher([limited, free], group_s=None)
    for index in range(70):
        dispatcher.dispatch(switch(index))
    assert dispatcher.flush(10)
    assert (len(limited.seen), len(free.seen)) == (60, 70)  # a burst of 60, then one a second
    assert [s.rate_limited for s in dispatcher.stats()] == [10, 0]
    time.sleep(2.2)  # two more tokens
    for index in range(3):
        dispatcher.dispatch(switch(100 + index))
    assert dispatcher.flush(10)
    assert len(limited.seen) == 62
    assert dispatcher.stats()[0].rate_limited == 11
    dispatcher.close()


def test_the_default_rate_limit_and_bad_values() -> None:
    assert PagerDutyNotifier("R" * 32).max_per_minute == 30
    assert PagerDutyNotifier("R" * 32, max_per_minute=None).max_per_minute is None
    for bad in (0, -1, "10", True):
        with pytest.raises(ValueError, match="max_per_minute must be a number more than 0"):
            PagerDutyNotifier("R" * 32, max_per_minute=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_per_minute"):
        Dispatcher([Counting(0)])


def test_config_sets_the_group_window_and_rate_limits(tmp_path: Path) -> None:
    def load(text: str) -> Guard:
        path = tmp_path / "costguard.yaml"
        path.write_text("store: memory://\n" + text)
        return Guard.from_yaml(path)

    guard = load("alert_group_s: 5\nnotifiers:\n  - log: {max_per_minute: 12}\n  - log: {max_per_minute: null}\n")
    assert guard._reporter.alerts._groups is not None and guard._reporter.alerts._groups.window_s == 5
    assert [lane.per_minute for lane in guard._reporter.alerts._lanes] == [12.0, None]
    guard.close()
    with pytest.raises(ConfigError, match="alert_group_s"):
        load("alert_group_s: 0\n")
    with pytest.raises(ConfigError, match=r"notifiers\[0\]\.log\.max_per_minute"):
        load("notifiers:\n  - log: {max_per_minute: 0}\n")
    off = load("alert_group_s: null\nnotifiers:\n  - log: {}\n")
    assert off._reporter.alerts._groups is None
    off.close()

"""Mistakes caught when the config loads, not at the first request (issue "Every mistake caught early")."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from costguard import BudgetExceeded, BudgetExpired, Ceiling, ConfigError, Guard, Limit, Period, Unit
from costguard.cli import main
from costguard.config import load_config
from costguard.model import make_match
from costguard.testing import FakeClock, RecordingNotifier
from helpers import make_guard, usd_ceiling


def _load(tmp_path: Path, text: str) -> Guard:
    path = tmp_path / "costguard.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(path, env={}).build(clock=FakeClock())


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("thresholds: [80, 100]\n", "thresholds[0]", "for 80 % write 0.8"),
        ("thresholds: [0.8, 1.5]\n", "thresholds[1]", "fraction of the limit in (0, 1]"),
        ("features:\n  f:\n    daily_usd: 1\n    thresholds: [0.5, 2]\n", "features.f.thresholds[1]", "(0, 1]"),
        ("ceilings:\n  - match: {team: '*'}\n    daily_usd: 1\n    thresholds: [90]\n", "thresholds[0]", "0.9"),
    ],
    ids=["percent", "over-one", "feature", "ceiling"],
)
def test_thresholds_are_fractions_of_the_limit(tmp_path: Path, text: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert caught.value.path is not None and path in caught.value.path
    assert words in str(caught.value)
    assert "(line " in str(caught.value)


def test_thresholds_are_sorted_and_repeats_are_one(tmp_path: Path) -> None:
    guard = _load(tmp_path, "thresholds: [1.0, 0.5, 0.8, 0.8]\n")
    assert guard.thresholds == (0.5, 0.8, 1.0)


def test_the_python_api_refuses_thresholds_outside_zero_to_one() -> None:
    for bad in ([80, 100], [0.8, 1.5], [0.0], [-0.5]):
        with pytest.raises(ValueError, match=r"fraction of the limit in \(0, 1\]"):
            Guard(thresholds=bad)
    ceiling = Ceiling(make_match({"feature": "f"}), (Limit(Period.DAY, Unit.USD, 1_000_000),), thresholds=(2.0,))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Guard(ceilings=[ceiling])


def test_kill_fires_at_the_first_block_when_1_is_not_listed() -> None:
    notifier = RecordingNotifier()
    guard = make_guard(
        usd_ceiling({"feature": "f"}, month=1.0), notifier=notifier, thresholds=[0.8], alert_group_s=None
    )
    blocked = 0
    for _ in range(12):
        try:
            guard.reserve("f", estimate_usd=0.1).commit()
        except Exception:
            blocked += 1
    guard.flush()
    assert blocked == 2
    assert [(e.kind, e.threshold) for e in notifier.events] == [("warn", 0.8), ("kill", 1.0)]


def test_a_soft_ceiling_warns_at_100_percent_when_1_is_not_listed() -> None:
    notifier = RecordingNotifier()
    guard = make_guard(
        usd_ceiling({"feature": "f"}, "soft", month=1.0), notifier=notifier, thresholds=[0.5], alert_group_s=None
    )
    for _ in range(11):
        guard.reserve("f", estimate_usd=0.1).commit()
    guard.flush()
    assert [(e.kind, e.threshold) for e in notifier.events] == [("warn", 0.5), ("warn", 1.0)]


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("ceilings:\n  - match: {team: '*'}\n    thresholds: [0.5]\n", "ceilings[0]"),
        ("customers:\n  acme:\n    enforcement: soft\n", "customers.acme"),
        ("features:\n  f:\n    estimate_usd: 0.01\n    per_customer: {thresholds: [0.5]}\n", "features.f.per_customer"),
    ],
    ids=["ceiling", "customer", "per-customer"],
)
def test_a_ceiling_without_a_limit_is_a_config_error(tmp_path: Path, text: str, path: str) -> None:
    with pytest.raises(ConfigError, match="needs at least one limit") as caught:
        _load(tmp_path, text)
    assert caught.value.path == path


def test_a_feature_without_limits_is_not_a_ceiling_and_loads(tmp_path: Path) -> None:
    guard = _load(tmp_path, "features:\n  f:\n    estimate_usd: 0.01\n")
    assert guard.ceilings == ()


def test_expire_after_on_a_calendar_period_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only applies to `total` limits") as caught:
        _load(tmp_path, "ceilings:\n  - match: {run: '*'}\n    daily_usd: 1\n    expire_after: 7d\n")
    assert caught.value.path == "ceilings[0].expire_after"
    assert "(line 4)" in str(caught.value)
    guard = _load(
        tmp_path, "ceilings:\n  - match: {run: '*'}\n    daily_usd: 1\n    total_usd: 5\n    expire_after: 7d\n"
    )
    assert guard.ceilings[0].expire_after_s == 7 * 86400


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite://costguard.db", "in-memory SQLite database"),
        ("postgresql+psycopg://u:hunter2@127.0.0.1/x?prefix=1bad", "table prefix"),
        ("redis://127.0.0.1:6379/0?timeout_ms=-5", "timeout_ms"),
        ("redis://:hunter2@127.0.0.1:6379/0?namespace=a%20b", "namespace"),
    ],
    ids=["sqlite-two-slashes", "pg-prefix", "redis-timeout", "redis-namespace"],
)
def test_check_config_checks_the_store_url_as_opening_would(tmp_path: Path, url: str, words: str) -> None:
    path = tmp_path / "costguard.yaml"
    path.write_text(f"store: {url}\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert words in result.output and "(line 1)" in result.output
    assert "hunter2" not in result.output  # nothing connected, and the password is not shown
    with pytest.raises(ConfigError, match=words):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("ceilings:\n  - match: {run: 'billing-*'}\n    total_usd: 5\n", "ceilings[0].match.run"),
        ("ceilings:\n  - match: {run: '*-nightly', team: '*'}\n    total_usd: 5\n", "ceilings[0].match.run"),
        ("features:\n  'chat-*':\n    daily_usd: 1\n", "features.chat-*"),
        ("customers:\n  'acme*':\n    daily_usd: 1\n", "customers.acme*"),
    ],
    ids=["prefix", "suffix", "feature-name", "customer-name"],
)
def test_a_glob_in_a_match_value_is_refused_not_matched_literally(tmp_path: Path, text: str, path: str) -> None:
    with pytest.raises(ConfigError, match="looks like a pattern") as caught:
        _load(tmp_path, text)
    assert caught.value.path == path
    assert "(line " in str(caught.value)


def test_the_python_api_refuses_a_glob_in_a_match_value() -> None:
    glob = Ceiling(make_match({"run": "billing-*"}), (Limit(Period.TOTAL, Unit.USD, 5_000_000),))
    with pytest.raises(ValueError, match="'billing-\\*' looks like a pattern"):
        Guard(ceilings=[glob])
    Guard(ceilings=[Ceiling(make_match({"run": "*"}), (Limit(Period.TOTAL, Unit.USD, 5_000_000),))]).close()


def test_an_id_with_a_star_in_it_is_still_just_an_id_at_run_time() -> None:
    # Client-supplied ids may contain `*`: a run-time limit on one, and calls by it, work as before.
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0))
    guard.set_limit({"customer": "a*b"}, period="day", usd=0.02, reason="odd id")
    guard.reserve("f", estimate_usd=0.02, customer="a*b").commit()
    with pytest.raises(BudgetExceeded):
        guard.reserve("f", estimate_usd=0.01, customer="a*b")
    guard.reserve("f", estimate_usd=0.01, customer="ab").commit()


@pytest.mark.parametrize(
    ("text", "line", "hint"),
    [
        ("features:\n  chat: {daily_usd: ${BUDGET}}\n", "line 2", 'quote it ("${VAR}")'),
        ("customers:\n  *:\n    daily_usd: 1\n", "line 2", 'quote the key or value ("*")'),
        ("features:\n  chat:\n    daily_usd: 1\n   estimate_usd: 2\n", "line 4", "check the indentation"),
    ],
    ids=["env-in-flow-mapping", "unquoted-star", "indentation"],
)
def test_yaml_syntax_errors_name_the_file_the_line_and_a_fix(tmp_path: Path, text: str, line: str, hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "costguard.yaml"))
    assert line in message and hint in message
    assert "<unicode string>" not in message and "\n" not in message


def test_a_yaml_error_never_quotes_the_line_it_is_on(tmp_path: Path) -> None:
    # The line may hold a secret: a token or a webhook URL written in the file.
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, "admin:\n  tokens:\n    - {name: ops, token: s3cr3t-t0ken-value, role: admin\n")
    assert "s3cr3t" not in str(caught.value) and "line " in str(caught.value)


RUN_TTL = "store: memory://\nceilings:\n  - match: {run: '*'}\n    total_usd: 5\n"


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("ceilings:\n  - match: {run: '*'}\n    daily_usd: 1\n    ttl: 1h\n", "ceilings[0].ttl", "`total` limits"),
        (RUN_TTL + "    ttl: 0\n", "ceilings[0].ttl", "positive duration"),
        (RUN_TTL + "    ttl: an hour\n", "ceilings[0].ttl", "such as 30m, 12h, 7d"),
        (RUN_TTL + "    ttl: 1h\n    enforcement: soft\n", "ceilings[0].ttl", "soft ceiling never refuses"),
        (RUN_TTL + "    ttl: 1d\n    expire_after: 12h\n", "ceilings[0].expire_after", "longer than ttl (1d)"),
        (RUN_TTL + "    ttl: 1h\n    expire_after: 1h\n", "ceilings[0].expire_after", "expire_after (1h)"),
        (
            "features:\n  f:\n    daily_usd: 1\n    per_customer: {daily_usd: 1, ttl: 1h}\n",
            "per_customer.ttl",
            "`total`",
        ),
    ],
    ids=["calendar", "zero", "words", "soft", "expire-shorter", "expire-equal", "per-customer"],
)
def test_a_ttl_that_could_not_hold_is_a_config_error(tmp_path: Path, text: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert caught.value.path is not None and caught.value.path.endswith(path)
    assert words in str(caught.value)
    assert "costguard.yaml" in str(caught.value)
    assert "(line " in str(caught.value)


def test_a_run_past_its_ttl_is_refused_as_expired(tmp_path: Path) -> None:
    """`ttl` on a run's total ceiling: calls of the run are refused from its first call + ttl, with
    `BudgetExpired` and a blocked audit record (reason expired), until expire_after drops the counter."""
    (tmp_path / "costguard.yaml").write_text(RUN_TTL + "    ttl: 1h\n    expire_after: 7d\n", encoding="utf-8")
    clock = FakeClock()
    guard = load_config(tmp_path / "costguard.yaml", env={}).build(clock=clock)
    assert (guard.ceilings[0].ttl_s, guard.ceilings[0].expire_after_s) == (3600, 7 * 86400)
    with guard.reserve("agent", run="r-42", estimate_usd=0.5) as r:
        r.commit(0.25)
    clock.advance(3599)
    with guard.reserve("agent", run="r-42", estimate_usd=0.5):
        pass
    clock.advance(1)
    with pytest.raises(BudgetExpired) as caught:
        with guard.reserve("agent", run="r-42", estimate_usd=0.5):
            pass
    assert isinstance(caught.value, BudgetExceeded)  # handled wherever a full ceiling is
    assert (caught.value.decision.reason, caught.value.scope, caught.value.retry_after_s) == (
        "expired",
        {"run": "r-42"},
        None,
    )
    assert "run=r-42 has expired: the ttl of 1h from its first call ran out" in str(caught.value)
    with guard.reserve("agent", run="r-43", estimate_usd=0.5):  # another run has its own
        pass
    guard.flush()
    (record,) = guard.audit(decision="blocked")
    assert (record.data["reason"], record.data["scope"], record.data["spent"]) == ("expired", {"run": "r-42"}, 0.75)
    guard.close()

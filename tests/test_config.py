"""costguard.yaml: the design's sample, every kind of error (file, key path, expectation, line) and ceilings."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import costguard
from costguard import BudgetExceeded, ConfigError, Guard
from costguard._config import load_settings
from costguard.config import Config, load_config
from costguard.fallback import Cached, Static
from costguard.model import Ceiling, Limit, Period, Unit
from costguard.testing import FakeClock, RecordingNotifier

# The design's section 1 sample without its `notifiers:` and `admin:` blocks (store swapped for a test one).
SAMPLE = """\
store: {store}
timezone: UTC
thresholds: [0.8, 1.0]                 # warn at 80 %, kill at 100 %
on_store_error: open                   # open | closed  (per feature overridable)
features:
  support_agent:
    monthly_usd: 500
    daily_usd: 40
    calls_per_day: 20000
    estimate_usd: 0.02                 # pre-call reservation when no estimator is given
    per_customer: {{monthly_usd: 20}}    # each customer gets its own counter for this feature
    degrade_at: 0.9
    fallback: {{static: "Support chat is busy, we'll email you."}}
  doc_search:
    monthly_usd: 300
    enforcement: soft                  # soft: never blocks, alerts and marks degraded
    fallback: {{cached: {{ttl_s: 86400}}}}
  "*":                                 # default for any feature not listed
    monthly_usd: 100
customers:                             # tenant-wide ceilings across all features
  "*": {{monthly_usd: 50}}
  acme: {{monthly_usd: 2000}}
ceilings:                              # any other label combination
  - match: {{team: "*", feature: support_agent}}
    monthly_usd: 100
  - match: {{vendor: twilio}}
    monthly_usd: 2000
  - match: {{run: "*"}}
    total_usd: 5.00
    expire_after: 7d
killswitch:
  cache_ms: 500
  exempt_paths: [/health, /costguard]
  exempt_features: [budget_assistant]
"""


def write(tmp_path: Path, text: str, name: str = "costguard.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def config_error(path: Path, env: dict[str, str] | None = None) -> ConfigError:
    """Load and build `path`; it must fail with a ConfigError."""
    with pytest.raises(ConfigError) as info:
        guard = load_config(path, env=env or {}).build(clock=FakeClock())
        guard.close()
    return info.value


def assert_names(error: ConfigError, path: Path, key: str, expected: str, line: int | None) -> None:
    message = str(error)
    assert str(path) in message, message
    assert error.file == str(path)
    assert key in message, message
    assert error.path == key
    assert expected in message, message
    if line is not None:
        assert f"line {line}" in message, message


@pytest.fixture
def guards() -> Iterator[list[Guard]]:
    """Guards a test builds; closed at the end."""
    built: list[Guard] = []
    yield built
    for guard in built:
        guard.close()


def _limits(ceiling: Ceiling) -> set[Limit]:
    return set(ceiling.limits)


# --------------------------------------------------------------------------- the sample


def test_design_sample_loads_with_expected_ceilings(tmp_path: Path) -> None:
    path = write(tmp_path, SAMPLE.format(store="memory://"))
    loaded = load_config(path, env={})
    assert loaded.file == str(path)
    ceilings = dict(loaded.config.ceiling_list())
    assert list(ceilings) == [
        "features.support_agent",
        "features.support_agent.per_customer",
        "features.doc_search",
        "features.*",
        "customers.*",
        "customers.acme",
        "ceilings[0]",
        "ceilings[1]",
        "ceilings[2]",
    ]
    support = ceilings["features.support_agent"]
    assert support.match_dict == {"feature": "support_agent"}
    assert _limits(support) == {
        Limit(Period.MONTH, Unit.USD, 500_000_000),
        Limit(Period.DAY, Unit.USD, 40_000_000),
        Limit(Period.DAY, Unit.CALLS, 20_000),
    }
    assert support.enforcement == "hard"
    assert support.exclude == ()

    per_customer = ceilings["features.support_agent.per_customer"]
    assert per_customer.match_dict == {"feature": "support_agent", "customer": "*"}
    assert _limits(per_customer) == {Limit(Period.MONTH, Unit.USD, 20_000_000)}

    doc = ceilings["features.doc_search"]
    assert doc.enforcement == "soft"
    assert _limits(doc) == {Limit(Period.MONTH, Unit.USD, 300_000_000)}

    default = ceilings["features.*"]
    assert default.match_dict == {"feature": "*"}
    assert dict(default.exclude) == {"feature": frozenset({"support_agent", "doc_search"})}
    assert _limits(default) == {Limit(Period.MONTH, Unit.USD, 100_000_000)}

    any_customer = ceilings["customers.*"]
    assert any_customer.match_dict == {"customer": "*"}
    assert dict(any_customer.exclude) == {"customer": frozenset({"acme"})}
    assert _limits(any_customer) == {Limit(Period.MONTH, Unit.USD, 50_000_000)}
    assert _limits(ceilings["customers.acme"]) == {Limit(Period.MONTH, Unit.USD, 2_000_000_000)}
    assert ceilings["customers.acme"].match_dict == {"customer": "acme"}

    assert ceilings["ceilings[0]"].match_dict == {"team": "*", "feature": "support_agent"}
    assert _limits(ceilings["ceilings[0]"]) == {Limit(Period.MONTH, Unit.USD, 100_000_000)}
    assert ceilings["ceilings[1]"].match_dict == {"vendor": "twilio"}
    run = ceilings["ceilings[2]"]
    assert run.match_dict == {"run": "*"}
    assert _limits(run) == {Limit(Period.TOTAL, Unit.USD, 5_000_000)}
    assert run.expire_after_s == 7 * 86400


def test_design_sample_builds_a_guard(tmp_path: Path, guards: list[Guard]) -> None:
    db = tmp_path / "costguard.db"
    path = write(tmp_path, SAMPLE.format(store=f"sqlite:///{db}"))
    guard = Guard.from_yaml(path, clock=FakeClock())
    guards.append(guard)
    expected = [c for _, c in load_config(path, env={}).config.ceiling_list()]
    assert list(guard.ceilings) == expected
    assert len(guard.ceilings) == 9
    assert guard.thresholds == (0.8, 1.0)
    assert guard.on_store_error == "open"
    assert guard.exempt_features == frozenset({"budget_assistant"})
    assert guard.exempt_paths == ("/health", "/costguard")
    assert guard.killswitch_cache_s == 0.5
    support = guard.feature("support_agent")
    assert support.estimate_usd == 20_000
    assert support.degrade_at == 0.9
    assert isinstance(support.fallback, Static)
    assert support.fallback.value == "Support chat is busy, we'll email you."
    doc = guard.feature("doc_search")
    assert isinstance(doc.fallback, Cached)
    assert doc.fallback.ttl_s == 86400
    assert guard.feature("anything_else") is guard.feature("*")


def test_design_sample_guard_enforces_per_customer_and_customer_ceilings(tmp_path: Path, guards: list[Guard]) -> None:
    path = write(tmp_path, SAMPLE.format(store="memory://"))
    guard = load_config(path, env={}).build(clock=FakeClock("2026-03-10T12:00:00Z"))
    guards.append(guard)
    # support_agent per customer: $20/month; bob (a "*" customer) also has $50 across features.
    with guard.reserve("support_agent", customer="bob", estimate_usd=20):
        pass
    with pytest.raises(BudgetExceeded) as info:
        guard.reserve("support_agent", customer="bob", estimate_usd=0.01)
    assert info.value.scope == {"feature": "support_agent", "customer": "bob"}
    with guard.reserve("doc_search", customer="bob", estimate_usd=30):
        pass
    with pytest.raises(BudgetExceeded) as info:
        guard.reserve("other_feature", customer="bob", estimate_usd=0.01)
    assert info.value.scope == {"customer": "bob"}


def test_guard_from_yaml_reads_env_vars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guards: list[Guard]) -> None:
    monkeypatch.setenv("CG_TEST_BUDGET", "12.5")
    monkeypatch.setenv("CG_TEST_STORE", "memory://")
    path = write(
        tmp_path,
        """\
        store: "${CG_TEST_STORE}"
        features:
          f:
            monthly_usd: ${CG_TEST_BUDGET}
        """,
    )
    guard = Guard.from_yaml(path, clock=FakeClock())
    guards.append(guard)
    assert guard.store.url == "memory://"
    assert set(guard.ceilings[0].limits) == {Limit(Period.MONTH, Unit.USD, 12_500_000)}


def test_guard_from_yaml_missing_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CG_TEST_UNSET_VARIABLE", raising=False)
    path = write(tmp_path, "store: memory://\nfeatures:\n  f:\n    monthly_usd: ${CG_TEST_UNSET_VARIABLE}\n")
    with pytest.raises(ConfigError) as info:
        Guard.from_yaml(path)
    assert "CG_TEST_UNSET_VARIABLE" in str(info.value)
    assert_names(info.value, path, "features.f.monthly_usd", "not set", 4)


# --------------------------------------------------------------------------- empty and top level


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    config = load_config(path, env={}).config
    assert config == Config()
    assert config.store == "sqlite:///costguard.db"
    assert config.timezone == "UTC"
    assert config.thresholds == [0.8, 1.0]
    assert config.on_store_error == "open"
    assert config.ceiling_list() == []


def test_empty_file_builds_a_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guards: list[Guard]) -> None:
    monkeypatch.chdir(tmp_path)  # the default store is ./costguard.db
    path = write(tmp_path, "")
    guard = Guard.from_yaml(path, clock=FakeClock())
    guards.append(guard)
    assert guard.ceilings == ()
    with guard.reserve("anything", estimate_usd=1000):
        pass


@pytest.mark.parametrize("text", ["- store: memory://\n", "just a string\n", "42\n", "~\n", "[]\n"])
def test_non_mapping_top_level(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    error = config_error(path)
    assert str(path) in str(error)
    assert error.file == str(path)
    assert "mapping" in str(error)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "features:\n  f: {monthly_usd: 1\n")
    error = config_error(path)
    assert str(path) in str(error)
    assert "YAML" in str(error)


# --------------------------------------------------------------------------- error table

# (yaml, key path, expected text, text on the line the error should point at)
ERRORS = [
    pytest.param(
        "store: memory://\nstroe: memory://\n",
        "stroe",
        "unknown key",
        "stroe:",
        id="unknown-top-level",
    ),
    pytest.param(
        "features:\n  support_agent:\n    montly_usd: 5\n",
        "features.support_agent.montly_usd",
        "unknown key",
        "montly_usd",
        id="unknown-feature-key",
    ),
    pytest.param(
        "features:\n  f:\n    per_customer: {monthly_usd: 1, estimate_usd: 2}\n",
        "features.f.per_customer.estimate_usd",
        "unknown key",
        "per_customer",
        id="unknown-per-customer-key",
    ),
    pytest.param(
        "customers:\n  acme:\n    monthly_usd: 1\n    colour: red\n",
        "customers.acme.colour",
        "unknown key",
        "colour",
        id="unknown-customer-key",
    ),
    pytest.param(
        "ceilings:\n  - match: {team: '*'}\n    monthly_usd: 1\n    matches: {a: b}\n",
        "ceilings[0].matches",
        "unknown key",
        "matches:",
        id="unknown-ceiling-key",
    ),
    pytest.param(
        "killswitch:\n  cache_sec: 5\n",
        "killswitch.cache_sec",
        "unknown key",
        "cache_sec",
        id="unknown-killswitch-key",
    ),
    pytest.param(
        "features:\n  f:\n    fallback: {cached: {ttl: 5}}\n",
        "features.f.fallback.cached.ttl",
        "unknown key",
        "fallback",
        id="unknown-deep-key",
    ),
    pytest.param(
        "features:\n  support_agent:\n    monthly_usd: .nan\n",
        "features.support_agent.monthly_usd",
        "finite",
        "monthly_usd",
        id="nan",
    ),
    pytest.param(
        "features:\n  support_agent:\n    monthly_usd: .NaN\n",
        "features.support_agent.monthly_usd",
        "finite",
        "monthly_usd",
        id="NaN",
    ),
    pytest.param(
        "features:\n  support_agent:\n    monthly_usd: .inf\n",
        "features.support_agent.monthly_usd",
        "finite",
        "monthly_usd",
        id="inf",
    ),
    pytest.param(
        "features:\n  support_agent:\n    daily_usd: -.inf\n",
        "features.support_agent.daily_usd",
        "finite",
        "daily_usd",
        id="minus-inf",
    ),
    pytest.param(
        "features:\n  support_agent:\n    monthly_usd: 1.0e+309\n",
        "features.support_agent.monthly_usd",
        "finite",
        "monthly_usd",
        id="1.0e+309",
    ),
    pytest.param(
        "features:\n  support_agent:\n    monthly_usd: 1e309\n",
        "features.support_agent.monthly_usd",
        "number",
        "monthly_usd",
        id="1e309",
    ),
    pytest.param(
        "features:\n  support_agent:\n    monthly_usd: true\n",
        "features.support_agent.monthly_usd",
        "number",
        "monthly_usd",
        id="bool-true",
    ),
    pytest.param(
        "features:\n  support_agent:\n    calls_per_day: yes\n",
        "features.support_agent.calls_per_day",
        "number",
        "calls_per_day",
        id="bool-yes",
    ),
    pytest.param(
        "features:\n  support_agent:\n    estimate_usd: false\n",
        "features.support_agent.estimate_usd",
        "number",
        "estimate_usd",
        id="bool-false-estimate",
    ),
    pytest.param(
        "features:\n  support_agent:\n    monthly_usd: -5\n",
        "features.support_agent.monthly_usd",
        ">= 0",
        "monthly_usd",
        id="negative",
    ),
    pytest.param(
        "features:\n  support_agent:\n    estimate_usd: -0.01\n",
        "features.support_agent.estimate_usd",
        ">= 0",
        "estimate_usd",
        id="negative-estimate",
    ),
    pytest.param(
        "customers:\n  acme: {monthly_usd: -1}\n",
        "customers.acme.monthly_usd",
        ">= 0",
        "acme",
        id="negative-customer",
    ),
    pytest.param(
        "features:\n  support_agent:\n    monthly_usd: '500'\n",
        "features.support_agent.monthly_usd",
        "number",
        "monthly_usd",
        id="quoted-number",
    ),
    pytest.param(
        "features:\n  support_agent:\n    monthly_usd: lots\n",
        "features.support_agent.monthly_usd",
        "number",
        "monthly_usd",
        id="string",
    ),
    pytest.param(
        "features:\n  support_agent:\n    calls_per_day: 1.5\n",
        "features.support_agent.calls_per_day",
        "whole number",
        "calls_per_day",
        id="fractional-count",
    ),
    pytest.param(
        "features:\n  support_agent:\n    monthly_usd: 1\n    monthly_usd: 2\n",
        "features.support_agent.monthly_usd",
        "duplicate key",
        "monthly_usd: 2",
        id="duplicate-key",
    ),
    pytest.param(
        "features:\n  a: {monthly_usd: 1}\n  a: {daily_usd: 1}\n",
        "features.a",
        "duplicate key",
        "a: {daily_usd",
        id="duplicate-feature",
    ),
    pytest.param(
        "timezone: Mars/Olympus\n",
        "timezone",
        "Mars/Olympus",
        "timezone",
        id="bad-timezone",
    ),
    pytest.param(
        "timezone: ../../etc/passwd\n",
        "timezone",
        "timezone",
        "timezone",
        id="timezone-path",
    ),
    pytest.param(
        "features:\n  f:\n    enforcement: strict\n",
        "features.f.enforcement",
        "'hard' or 'soft'",
        "enforcement",
        id="bad-enforcement",
    ),
    pytest.param(
        "features:\n  f:\n    degrade_at: 1.5\n",
        "features.f.degrade_at",
        "(0, 1]",
        "degrade_at",
        id="degrade-over-1",
    ),
    pytest.param(
        "features:\n  f:\n    degrade_at: 0\n",
        "features.f.degrade_at",
        "ratio",
        "degrade_at",
        id="degrade-zero",
    ),
    pytest.param(
        "features:\n  f:\n    fallback: {static: busy, raise: true}\n",
        "features.f.fallback",
        "exactly one",
        "fallback",
        id="two-fallbacks",
    ),
    pytest.param(
        "features:\n  f:\n    fallback:\n      static: busy\n      cached: {ttl_s: 5}\n",
        "features.f.fallback",
        "exactly one",
        "static: busy",  # a block mapping's line is that of its first key
        id="two-fallbacks-block",
    ),
    pytest.param(
        "features:\n  f:\n    fallback: {}\n",
        "features.f.fallback",
        "exactly one",
        "fallback",
        id="no-fallback-kind",
    ),
    pytest.param(
        "on_store_error: maybe\n",
        "on_store_error",
        "'open' or 'closed'",
        "on_store_error",
        id="bad-on-store-error",
    ),
    pytest.param(
        "thresholds: [0.8, -1]\n",
        "thresholds[1]",
        ">= 0",
        "thresholds",
        id="negative-threshold",
    ),
    pytest.param(
        "ceilings:\n  - match: {team: 1}\n    monthly_usd: 1\n",
        "ceilings[0].match",
        "non-empty string",
        "match",
        id="non-string-match",
    ),
    pytest.param(
        "ceilings:\n  - match: [team]\n    monthly_usd: 1\n",
        "ceilings[0].match",
        "mapping",
        "match",
        id="match-not-mapping",
    ),
    pytest.param(
        "ceilings:\n  - monthly_usd: 1\n",
        "ceilings[0].match",
        "missing",
        "- monthly_usd",
        id="missing-match",
    ),
    pytest.param(
        "ceilings:\n  - match: {run: '*'}\n    total_usd: 1\n    expire_after: 7 days\n",
        "ceilings[0].expire_after",
        "duration",
        "expire_after",
        id="bad-duration",
    ),
    pytest.param(
        "features: [support_agent]\n",
        "features",
        "dict",
        "features",
        id="features-not-mapping",
    ),
]


@pytest.mark.parametrize(("text", "key", "expected", "line_text"), ERRORS)
def test_config_errors_name_file_path_expectation_and_line(
    tmp_path: Path, text: str, key: str, expected: str, line_text: str
) -> None:
    path = write(tmp_path, "store: memory://\n" + text if not text.startswith("store:") else text)
    error = config_error(path)
    assert isinstance(error, ValueError)
    assert isinstance(error, costguard.CostGuardError)
    assert_names(error, path, key, expected, line_of(path, line_text))


def test_error_on_a_later_line_points_at_that_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        store: memory://
        features:
          a:
            monthly_usd: 1
          b:
            monthly_usd: 2
          c:
            monthly_usd: 3
            daily_usd: -4
        """,
    )
    assert_names(config_error(path), path, "features.c.daily_usd", ">= 0", 9)


def test_several_errors_are_summarised(tmp_path: Path) -> None:
    path = write(tmp_path, "store: memory://\nfeatures:\n  a: {monthly_usd: -1}\n  b: {monthly_usd: .nan}\n")
    message = str(config_error(path))
    assert "features.a.monthly_usd" in message
    assert "features.b.monthly_usd" in message


# --------------------------------------------------------------------------- ${VAR}


def test_unquoted_numeric_var_becomes_a_number(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        store: memory://
        features:
          f:
            monthly_usd: ${BUDGET}
            calls_per_day: ${CALLS}
            estimate_usd: ${ESTIMATE}
        """,
    )
    config = load_config(path, env={"BUDGET": "500", "CALLS": "20000", "ESTIMATE": "0.0000001"}).config
    feature = config.features["f"]
    assert feature.monthly_usd == 500_000_000
    assert feature.calls_per_day == 20_000
    assert feature.estimate_usd == 1  # estimates round up


def test_quoted_var_stays_a_string(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        store: memory://
        features:
          f:
            fallback: {static: "${MESSAGE}"}
          g:
            fallback: {static: '${MESSAGE}'}
        """,
    )
    config = load_config(path, env={"MESSAGE": "123"}).config
    assert config.features["f"].fallback is not None
    assert config.features["f"].fallback.static == "123"
    assert config.features["g"].fallback is not None
    assert config.features["g"].fallback.static == "123"


def test_quoted_numeric_var_where_a_number_belongs_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'store: memory://\nfeatures:\n  f: {monthly_usd: "${BUDGET}"}\n')
    assert_names(config_error(path, env={"BUDGET": "500"}), path, "features.f.monthly_usd", "number", 3)


def test_var_inside_a_larger_string(tmp_path: Path) -> None:
    path = write(tmp_path, "store: sqlite:///${DIR}/cg.db\n")
    assert load_config(path, env={"DIR": "/srv/data"}).config.store == "sqlite:////srv/data/cg.db"


def test_unquoted_var_with_yaml_special_value_is_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "store: memory://\nfeatures:\n  f:\n    monthly_usd: ${BUDGET}\n")
    for value in (".nan", ".inf", "-5", "true"):
        error = config_error(path, env={"BUDGET": value})
        assert_names(error, path, "features.f.monthly_usd", "number", 4)


def test_missing_variable_names_variable_and_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        store: memory://
        features:
          support_agent:
            monthly_usd: ${SUPPORT_BUDGET}
        """,
    )
    error = config_error(path, env={"OTHER": "1"})
    assert "SUPPORT_BUDGET" in str(error)
    assert_names(error, path, "features.support_agent.monthly_usd", "not set", 4)


def test_missing_variable_in_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, "store: memory://\nkillswitch:\n  exempt_paths: [/health, '${ADMIN_PATH}']\n")
    error = config_error(path)
    assert "ADMIN_PATH" in str(error)
    assert_names(error, path, "killswitch.exempt_paths[1]", "not set", 3)


def test_env_none_reads_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CG_TEST_FROM_OS", "7")
    path = write(tmp_path, "store: memory://\nfeatures:\n  f:\n    monthly_usd: ${CG_TEST_FROM_OS}\n")
    assert load_config(path).config.features["f"].monthly_usd == 7_000_000


# --------------------------------------------------------------------------- build-time errors


@pytest.mark.parametrize("url", ["ftp://example.com/x", "mongodb://localhost/x", "memory", "sqlite"])
def test_unknown_store_scheme(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, f"store: {url}\n")
    assert_names(config_error(path), path, "store", url, 1)


def test_two_ceilings_with_the_same_match(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        store: memory://
        ceilings:
          - match: {team: "*", feature: support_agent}
            monthly_usd: 100
          - match: {feature: support_agent, team: "*"}
            daily_usd: 10
        """,
    )
    error = config_error(path)
    assert "ceilings[0]" in str(error)
    assert_names(error, path, "ceilings[1]", "same match", None)


def test_feature_and_ceiling_with_the_same_match(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        store: memory://
        features:
          support_agent: {monthly_usd: 500}
        ceilings:
          - match: {feature: support_agent}
            daily_usd: 10
        """,
    )
    error = config_error(path)
    assert "features.support_agent" in str(error)
    assert_names(error, path, "ceilings[0]", "same match", None)


def test_customer_and_ceiling_with_the_same_match(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        store: memory://
        customers:
          acme: {monthly_usd: 2000}
        ceilings:
          - match: {customer: acme}
            daily_usd: 10
        """,
    )
    error = config_error(path)
    assert "customers.acme" in str(error)
    assert_names(error, path, "ceilings[0]", "same match", None)


def test_duplicate_match_error_points_at_a_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        store: memory://
        ceilings:
          - match: {vendor: twilio}
            monthly_usd: 100
          - match: {vendor: twilio}
            daily_usd: 10
        """,
    )
    assert_names(config_error(path), path, "ceilings[1]", "same match", 5)


def test_design_notifiers_block_builds(tmp_path: Path, guards: list[Guard]) -> None:
    path = write(
        tmp_path,
        """\
        store: memory://
        notifiers:
          - slack: {webhook_url: "${SLACK_WEBHOOK_URL}"}
          - pagerduty: {routing_key: "${PAGERDUTY_ROUTING_KEY}", on: [kill]}
          - webhook: {url: "https://ops.example.com/hooks/costguard", secret: "${HOOK_SECRET}"}
          - log: {level: INFO}
        """,
    )
    env = {"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x", "PAGERDUTY_ROUTING_KEY": "r" * 32}
    guard = load_config(path, env={**env, "HOOK_SECRET": "s3cret"}).build(clock=FakeClock())
    guards.append(guard)
    names = [type(n).__name__ for n in guard.notifiers]
    assert names == ["SlackNotifier", "PagerDutyNotifier", "WebhookNotifier", "LogNotifier"]
    assert guard.notifiers[1].on == frozenset({"kill"})  # type: ignore[attr-defined]
    assert guard.notifiers[2].secret == "s3cret"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("entry", "key", "expected"),
    [
        pytest.param("slack: {}", "notifiers[0].slack", "either webhook_url, or token and channel", id="slack-empty"),
        pytest.param("slack: {token: xoxb-1}", "notifiers[0].slack", "channel is required", id="slack-no-channel"),
        pytest.param("slack: {webhook_url: ftp://x}", "notifiers[0].slack.webhook_url", "http", id="slack-url"),
        pytest.param("pagerduty: {}", "notifiers[0].pagerduty.routing_key", "required", id="pd-no-key"),
        pytest.param("webhook: {url: 'not a url'}", "notifiers[0].webhook.url", "http", id="webhook-url"),
        pytest.param("webhook: {url: 'http://x', on: [wran]}", "notifiers[0].webhook.on[0]", "warn", id="bad-kind"),
        pytest.param("webhook: {url: 'http://x', attempts: 0}", "notifiers[0].webhook.attempts", "1", id="attempts"),
        pytest.param("webhook: {url: 'http://x', colour: red}", "notifiers[0].webhook.colour", "", id="unknown-key"),
        pytest.param("log: {level: LOUD}", "notifiers[0].log.level", "WARNING", id="log-level"),
        pytest.param("teams: {url: 'http://x'}", "notifiers[0]", "unknown notifier 'teams'", id="unknown-notifier"),
    ],
)
def test_bad_notifier_is_a_config_error(tmp_path: Path, entry: str, key: str, expected: str) -> None:
    path = write(tmp_path, f"store: memory://\nnotifiers:\n  - {entry}\n")
    error = config_error(path)
    assert str(path) in str(error)
    assert error.path == key, str(error)
    assert expected in str(error)


# --------------------------------------------------------------------------- no half-built guard


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param("features:\n  f: {monthly_usd: -1}\n", id="validation"),
        pytest.param("features:\n  f:\n    monthly_usd: ${UNSET_VAR}\n", id="missing-var"),
        pytest.param("timezone: Nowhere/City\n", id="timezone"),
        pytest.param(
            "features:\n  f: {monthly_usd: 1}\nceilings:\n  - match: {feature: f}\n    daily_usd: 1\n",
            id="duplicate-match",
        ),
        pytest.param("notifiers:\n  - pagerduty: {routing_key: ''}\n", id="notifier"),
        pytest.param("features:\n  f: {monthly_usd: 1}\n  f: {monthly_usd: 2}\n", id="duplicate-key"),
        pytest.param("features:\n  f: {monthly_usd: [1\n", id="bad-yaml"),
    ],
)
def test_config_error_never_leaves_a_half_built_guard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tail: str
) -> None:
    monkeypatch.delenv("UNSET_VAR", raising=False)
    db = tmp_path / "x.db"
    path = write(tmp_path, f"store: sqlite:///{db}\n{tail}")
    with pytest.raises(ConfigError):
        Guard.from_yaml(path, clock=FakeClock())
    assert not db.exists()
    assert list(tmp_path.iterdir()) == [path]


# --------------------------------------------------------------------------- "*" features and customers


def test_star_feature_excludes_listed_features(tmp_path: Path, guards: list[Guard]) -> None:
    path = write(
        tmp_path,
        """\
        store: memory://
        features:
          support_agent: {monthly_usd: 500}
          "*": {monthly_usd: 100}
        """,
    )
    guard = Guard.from_yaml(path, clock=FakeClock("2026-05-05T10:00:00Z"))
    guards.append(guard)
    star = next(c for c in guard.ceilings if c.match_dict == {"feature": "*"})
    assert star.bind({"feature": "support_agent"}) is None
    assert star.bind({"feature": "other"}) == {"feature": "other"}
    # A listed feature spends above the "*" limit: "*" doesn't apply to it.
    with guard.reserve("support_agent", estimate_usd=400):
        pass
    with guard.reserve("support_agent", estimate_usd=100):
        pass
    with pytest.raises(BudgetExceeded) as info:
        guard.reserve("support_agent", estimate_usd=0.000001)
    assert info.value.scope == {"feature": "support_agent"}
    # Unlisted features each get their own $100, untouched by support_agent's $500.
    with guard.reserve("summarize", estimate_usd=100):
        pass
    with pytest.raises(BudgetExceeded) as info:
        guard.reserve("summarize", estimate_usd=0.01)
    assert info.value.scope == {"feature": "summarize"}
    with guard.reserve("translate", estimate_usd=100):
        pass


def test_star_customer_and_named_customer(tmp_path: Path, guards: list[Guard]) -> None:
    path = write(
        tmp_path,
        """\
        store: memory://
        customers:
          "*": {monthly_usd: 50}
          acme: {monthly_usd: 2000}
        """,
    )
    guard = Guard.from_yaml(path, clock=FakeClock("2026-05-05T10:00:00Z"))
    guards.append(guard)
    # acme has 2000, not 50.
    with guard.reserve("chat", customer="acme", estimate_usd=1500):
        pass
    with guard.reserve("search", customer="acme", estimate_usd=500):
        pass
    with pytest.raises(BudgetExceeded) as info:
        guard.reserve("chat", customer="acme", estimate_usd=0.01)
    assert info.value.scope == {"customer": "acme"}
    assert info.value.limit_usd == 2000
    # Everyone else has 50 each, across features.
    with guard.reserve("chat", customer="globex", estimate_usd=30):
        pass
    with guard.reserve("search", customer="globex", estimate_usd=20):
        pass
    with pytest.raises(BudgetExceeded) as info:
        guard.reserve("chat", customer="globex", estimate_usd=0.01)
    assert info.value.scope == {"customer": "globex"}
    assert info.value.limit_usd == 50
    with pytest.raises(BudgetExceeded):
        guard.reserve("chat", customer="initech", estimate_usd=50.01)
    with guard.reserve("chat", customer="initech", estimate_usd=50):
        pass
    # A call without a customer label matches no customer ceiling.
    with guard.reserve("chat", estimate_usd=10_000):
        pass


def test_star_customer_month_resets(tmp_path: Path, guards: list[Guard]) -> None:
    path = write(tmp_path, 'store: memory://\ntimezone: Asia/Kolkata\ncustomers:\n  "*": {monthly_usd: 50}\n')
    clock = FakeClock("2026-05-31T18:00:00Z")  # 23:30 on May 31 in Kolkata
    guard = Guard.from_yaml(path, clock=clock)
    guards.append(guard)
    with guard.reserve("chat", customer="globex", estimate_usd=50):
        pass
    with pytest.raises(BudgetExceeded):
        guard.reserve("chat", customer="globex", estimate_usd=0.01)
    clock.advance(30 * 60)  # 00:00 on June 1 in Kolkata (still May 31 in UTC)
    with guard.reserve("chat", customer="globex", estimate_usd=50):
        pass


def test_exactly_250_calls_fit_a_one_dollar_config_cap(tmp_path: Path, guards: list[Guard]) -> None:
    path = write(tmp_path, "store: memory://\nfeatures:\n  f: {total_usd: 1.00, estimate_usd: 0.004}\n")
    guard = Guard.from_yaml(path, clock=FakeClock())
    guards.append(guard)
    for _ in range(250):
        with guard.reserve("f"):
            pass
    with pytest.raises(BudgetExceeded):
        guard.reserve("f")


def test_an_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    """A 300-byte "billion laughs": each line repeats the one before nine times."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 9):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nstore: memory://\n")
    assert path.stat().st_size < 1000
    started = time.monotonic()
    with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
        load_config(path)
    assert time.monotonic() - started < 5.0


# --------------------------------------------------------------------------- layers: the config below the guard

PACKAGE = Path(costguard.__file__).parent
ABOVE_THE_CONFIG = ("costguard.guard", "costguard.config")

# The sample with a notifier and an admin block: every section `settings()` turns into something.
FULL = (
    SAMPLE.format(store="memory://")
    + """\
notifiers:
  - log: {level: INFO}
admin:
  max_limit_usd: 5000
  tokens:
    - {name: ops, token: "0123456789abcdef", role: admin}
labels: [team, run]
outage_allowance_usd: 2.5
store_timeout_ms: 300
pricing:
  models: {my-model: {input_per_mtok: 1.5}}
"""
)


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path], *, type_checking: bool) -> set[str]:
    """The package's modules `name` imports, function-level imports and parent packages included, the top
    package left out (every submodule's import runs it); `if TYPE_CHECKING:` blocks only if `type_checking`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(inner) for part in node.body for inner in ast.walk(part))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{name}: a relative import"  # the package imports absolutely
            base = node.module
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    with_parents = {".".join(m.split(".")[:n]) for m in found for n in range(2, m.count(".") + 2)}
    return {m for m in with_parents if m in modules and m != name}


def _reachable(start: str) -> dict[str, str | None]:
    """Modules `start` imports at run time, directly or through others: module -> the one importing it.
    `start`'s own package is read with its `if TYPE_CHECKING:` imports too."""
    modules = _modules()
    own = start + "."
    seen: dict[str, str | None] = {m: None for m in modules if m == start or m.startswith(own)}
    todo = list(seen)
    while todo:
        name = todo.pop()
        inside = name == start or name.startswith(own)
        for imported in _imports(name, modules[name], modules, type_checking=inside):
            if imported not in seen:
                seen[imported] = name
                todo.append(imported)
    return seen


def _chain(reached: dict[str, str | None], name: str) -> str:
    out = [name]
    while (before := reached[out[-1]]) is not None:
        out.append(before)
    return " <- ".join(out)


def test_the_config_layer_never_imports_the_guard_nor_the_public_config() -> None:
    reached = _reachable("costguard._config")
    assert {"costguard._config.schema", "costguard._config.document", "costguard.settings"} <= set(reached)
    for name in ABOVE_THE_CONFIG:
        assert name not in reached, _chain(reached, name)
    # the walk does see imports: the public module sits on the guard, and the guard never reads it
    assert "costguard.guard" in _reachable("costguard.config")
    guard = _reachable("costguard.guard")
    assert "costguard._config" in guard
    assert "costguard.config" not in guard, _chain(guard, "costguard.config")


def test_settings_load_without_importing_the_guard(tmp_path: Path) -> None:
    """At run time too: with the package's `__init__` (which imports the guard) left out, the config layer
    loads a file into `GuardSettings` and neither `costguard.guard` nor `costguard.config` is imported."""
    path = write(tmp_path, FULL)
    script = textwrap.dedent(
        """\
        import sys, types

        package = types.ModuleType("costguard")
        package.__path__ = [sys.argv[1]]
        sys.modules["costguard"] = package  # the submodules alone: the package's __init__ imports the guard

        from costguard._config import load_settings

        settings = load_settings(sys.argv[2], env={})
        loaded = sorted(name for name in sys.modules if name in ("costguard.guard", "costguard.config"))
        print(type(settings).__name__, len(settings.ceilings), len(settings.features), len(settings.notifiers), loaded)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(PACKAGE), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["GuardSettings", "9", "3", "1", "[]"], done.stdout


def _described(guard: Guard) -> dict[str, Any]:
    """What a guard was built with, comparable across two builds (fallbacks and notifiers by kind)."""
    return {
        "ceilings": guard.ceilings,
        "features": {
            name: (
                type(f.fallback).__name__,
                getattr(f.fallback, "value", None),
                getattr(f.fallback, "ttl_s", None),
                f.estimate_usd,
                f.degrade_at,
                f.learn,
            )
            for name, f in guard.features.items()
        },
        "notifiers": [type(n).__name__ for n in guard.notifiers],
        "admin": guard.admin,
        "store": type(guard.store).__name__,
        "tz": guard.tz,
        "thresholds": guard.thresholds,
        "pricing": guard.pricing,
        "killswitch": (guard.killswitch_cache_s, guard.exempt_features, guard.exempt_paths),
        "limits": (guard.max_label_length, guard.deadline_s, guard.outage_allowance, guard.declared_labels),
    }


def test_from_yaml_and_load_config_build_the_same_guard(tmp_path: Path, guards: list[Guard]) -> None:
    path = write(tmp_path, FULL)
    mine = RecordingNotifier()
    by_guard = Guard.from_yaml(path, notifiers=[mine], clock=FakeClock())
    guards.append(by_guard)
    by_config = load_config(path).build(notifiers=[mine], clock=FakeClock())
    guards.append(by_config)
    assert _described(by_guard) == _described(by_config)
    assert by_guard.notifiers[0] is mine  # the caller's notifiers come before the file's
    assert [type(n).__name__ for n in by_guard.notifiers[1:]] == ["LogNotifier"]
    assert by_guard.admin.max_limit_usd == 5_000_000_000
    assert [t.name for t in by_guard.admin.tokens] == ["ops"]
    assert isinstance(by_guard.features["support_agent"].fallback, Static)
    assert isinstance(by_guard.features["doc_search"].fallback, Cached)

    settings = load_settings(path)
    assert tuple(settings.ceilings) == by_guard.ceilings
    assert len(settings.notifiers) == 1
    assert settings.admin == by_guard.admin
    assert settings.store_options == {"timeout_ms": 300.0}
    assert load_config(path).config.settings().ceilings == settings.ceilings


def test_load_settings_names_the_file_key_path_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        store: memory://
        features:
          f: {monthly_usd: 1}
        ceilings:
          - match: {feature: f}
            daily_usd: 1
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert_names(info.value, path, "ceilings[0]", "same match as features.f", 5)

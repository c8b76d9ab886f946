"""Fuzzing configs and label values: no crash, and no call ever writes to another scope's counter.

Three properties, each driven by hypothesis:

1. **Configs.** A generated config document (as YAML would produce it: wrong types, negative, huge and
   non-finite numbers, unknown keys, bad periods and durations, unicode, nested junk) either loads and
   builds a `Guard`, or raises `ConfigError` naming the file and the key path; no other exception
   escapes. The same holds for the document dumped to YAML text, and for random YAML-ish text. Valid
   generated configs always load, round-trip through YAML to the same `Config`, and build a working guard
   on memory://.
2. **Label values.** Any text as a `customer` / `tenant` value (control characters, `:`, `|`, `{`, `=`,
   `,`, `*`, unicode, NUL, surrogates, empty, up to and beyond `max_label_length`) either raises `LabelError`
   (empty, too long, NUL or a surrogate: exactly then) or is reserved, committed and counted exactly, on
   every store.
3. **No cross-scope write.** Random sequences of reserve / commit / release / retried commits with label
   values built to collide when encoded (`a`, `a:b`, `a,tenant=b`, `*`, `{a}`, `a%3Ab`, …) run against
   ceilings `{feature, customer: *}`, `{feature, customer: *, tenant: *}` and `{feature}`; after every step
   `guard.status()` equals a pure-Python model of every counter, and is zero everywhere else.

CI runs a fixed, derandomized set of examples per test; `COSTGUARD_FUZZ_EXAMPLES=2000` explores fresh
ones locally (it replaces every test's example count). The plain tests after each fuzzer pin the inputs
these fuzzers first failed on (huge integers, `- log:`, invalid dates and tags in YAML, recursive aliases,
store URLs that passed validation but could not open, NUL and surrogates in labels).
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from conftest import STORE_KINDS, drop_namespace, drop_tables, open_test_store, store_url_for
from costguard import BudgetExceeded, ConfigError, Decision, Guard
from costguard.config import Config, parse_config
from costguard.errors import LabelError
from costguard.model import (
    DEFAULT_MAX_LABEL_LENGTH,
    Ceiling,
    Limit,
    Period,
    Unit,
    encode_scope,
    make_match,
    micros_to_usd,
    to_micros,
)
from costguard.reservation import Reservation
from costguard.status import Status
from costguard.yamlload import load_yaml
from helpers import make_guard

# --------------------------------------------------------------------------- settings

FUZZ_EXAMPLES = int(os.environ.get("COSTGUARD_FUZZ_EXAMPLES", "0")) or None


def fuzz(ci_examples: int, *, store: bool = False) -> settings:
    """`ci_examples` fixed (derandomized) examples in CI, or COSTGUARD_FUZZ_EXAMPLES fresh ones."""
    suppressed = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
    if store:
        # Stores come from a per-test fixture (`store_urls`); examples are kept apart by a feature of their own.
        suppressed.append(HealthCheck.function_scoped_fixture)
    return settings(
        max_examples=FUZZ_EXAMPLES or ci_examples,
        deadline=None,
        derandomize=FUZZ_EXAMPLES is None,
        suppress_health_check=suppressed,
        print_blob=True,
    )


FILE = "fuzz.yaml"
T = TypeVar("T")

# --------------------------------------------------------------------------- config documents

LIMIT_KEYS = [
    f"{prefix}{period}" for period in ("hour", "day", "week", "month") for prefix in ("calls_per_", "tokens_per_")
] + [
    "hourly_usd",
    "daily_usd",
    "weekly_usd",
    "monthly_usd",
    "total_usd",
    "calls_total",
    "tokens_total",
]
# Misspellings and periods costguard does not have: unknown keys, which must be errors.
BAD_LIMIT_KEYS = ["montly_usd", "yearly_usd", "calls_per_year", "monthly", "usd", "quarterly_usd", "Monthly_usd"]

_special = st.sampled_from([0, -1, 1, 0.5, -0.0, 1e-9, 1e-300, 1e300, 2**63, 2**64, 10**300, -(10**300)])
HUGE = 10**400  # beyond any float
BEYOND_STR_LIMIT = 10**5000  # beyond the ints Python will print (4300 digits)
numbers = st.one_of(
    st.integers(-(10**6), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    _special,
    st.sampled_from([10**30, HUGE, -HUGE]),
    st.sampled_from([1, -1]).map(lambda sign: sign * BEYOND_STR_LIMIT),  # built lazily: it has no repr()
)
texts = st.text(max_size=24)
junk_key = texts  # "" included: an empty key must still be named in errors


def junk_of(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Nested junk: scalars, lists and mappings of anything."""
    scalars = st.one_of(st.none(), st.booleans(), leaf, texts)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(junk_key, inner, max_size=3),
        max_leaves=6,
    )


junk = junk_of(numbers)

amounts = numbers | st.sampled_from(["10", "1e3", "", "abc", "0x10", ".nan", "$5"]) | junk
ratios = numbers | junk
durations = (
    st.sampled_from(["7d", "30m", "1.5h", "12h", "0s", "-1d", "7 d", "7days", "", "1e3s", "2w", "d", "10x"])
    | numbers
    | junk
)
feature_names = st.one_of(
    st.sampled_from(["support_agent", "doc_search", "*", "a:b", "é", "a.b", "", " ", "x" * 300, "${NOPE}"]), texts
)


def limits_block(**extra: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A features / customers / ceilings entry: limit keys, thresholds, expiry, misspellings."""
    optional: dict[str, st.SearchStrategy[Any]] = dict.fromkeys(LIMIT_KEYS, amounts)
    optional |= dict.fromkeys(BAD_LIMIT_KEYS[:2], amounts)
    optional |= {
        "enforcement": st.sampled_from(["hard", "soft", "HARD", "off", ""]) | junk,
        "thresholds": st.lists(ratios, max_size=4) | junk,
        "expire_after": durations,
        "junk": junk,
        **extra,
    }
    return st.fixed_dictionaries({}, optional=optional)


fallbacks = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "static": junk,
            "cached": st.fixed_dictionaries({}, optional={"ttl_s": durations, "ttl": junk}) | junk,
            "raise": st.booleans() | junk,
        },
    ),
    junk,
)
learn = st.fixed_dictionaries({}, optional={"percentile": numbers, "window": numbers, "min_samples": numbers}) | junk
policy = st.sampled_from(["open", "closed", "release", "keep", "sync", "background", "maybe", ""]) | junk

feature_block = limits_block(
    estimate_usd=amounts,
    estimate_tokens=amounts,
    per_customer=limits_block() | junk,
    degrade_at=ratios,
    fallback=fallbacks,
    on_store_error=policy,
    on_call_error=policy,
    commit=policy,
    max_call_usd=amounts,
    estimator=st.sampled_from(["fixed", "learned", "ml"]) | junk,
    learn=learn,
)
label_names = st.sampled_from(["feature", "customer", "team", "run", "vendor", "a b", "1x", ""]) | texts
match = st.dictionaries(label_names, st.sampled_from(["*", "support_agent", "", "x" * 300]) | junk, max_size=3)
ceiling_block = limits_block(match=match | junk)

notifier = st.one_of(
    st.fixed_dictionaries({"log": st.none()}),  # YAML `- log:`: a log notifier with its defaults
    st.fixed_dictionaries({"webhook": st.none()}),  # no url: a ConfigError naming notifiers[i].webhook
    st.fixed_dictionaries(
        {
            "log": st.fixed_dictionaries(
                {},
                optional={
                    "logger": texts,
                    "level": st.sampled_from(["INFO", "WARNING", "debug", "LOUD"]) | junk,
                    "on": st.lists(st.sampled_from(["warn", "kill", "store_error", "boom"]), max_size=3) | junk,
                },
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "webhook": st.fixed_dictionaries(
                {},
                optional={
                    "url": st.sampled_from(["https://ops.example.com/hook", "ftp://x", "", "http://"]) | texts,
                    "secret": texts | junk,
                    "headers": st.dictionaries(texts, texts, max_size=2) | junk,
                    "attempts": numbers,
                    "timeout_s": numbers,
                },
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "slack": st.fixed_dictionaries(
                {},
                optional={
                    "webhook_url": st.sampled_from(["https://hooks.slack.com/x", "nope"]) | texts,
                    "token": texts,
                    "channel": texts,
                    "min_interval_s": numbers,
                },
            )
        }
    ),
    st.fixed_dictionaries({"pagerduty": st.fixed_dictionaries({}, optional={"routing_key": texts | junk})}),
    st.dictionaries(junk_key, junk, min_size=1, max_size=2),
    junk,
)

config_documents = st.fixed_dictionaries(
    {},
    optional={
        "store": st.sampled_from(["memory://", "sqlite:///costguard.db", "redis://localhost", "ftp://x", "", "memory"])
        | junk,
        "store_timeout_ms": numbers | junk,
        "timezone": st.sampled_from(["UTC", "Europe/Berlin", "Mars/Olympus", "", "../etc/passwd", "utc"]) | junk,
        "thresholds": st.lists(ratios, max_size=4) | junk,
        "on_store_error": policy,
        "on_call_error": policy,
        "commit": policy,
        "max_label_length": numbers | junk,
        "pricing": st.fixed_dictionaries(
            {},
            optional={
                "genai_prices": st.booleans() | junk,
                "models": st.dictionaries(texts, st.dictionaries(texts, numbers, max_size=2) | junk, max_size=2),
                "units": st.dictionaries(texts, amounts, max_size=2) | junk,
            },
        )
        | junk,
        "features": st.dictionaries(feature_names, feature_block | junk, max_size=3) | junk,
        "customers": st.dictionaries(feature_names, limits_block() | junk, max_size=3) | junk,
        "ceilings": st.lists(ceiling_block | junk, max_size=3) | junk,
        "notifiers": st.lists(notifier, max_size=2) | junk.filter(lambda v: not isinstance(v, list)),
        "killswitch": st.fixed_dictionaries(
            {},
            optional={
                "cache_ms": numbers | junk,
                "exempt_paths": st.lists(texts, max_size=2) | junk,
                "exempt_features": st.lists(texts, max_size=2) | junk,
            },
        )
        | junk,
        "admin": st.fixed_dictionaries(
            {},
            optional={
                "tokens": st.lists(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "name": texts | junk,
                            "token": st.text(max_size=30) | junk,
                            "role": st.sampled_from(["read", "operator", "admin", "root"]) | junk,
                            "tenant": texts | junk,
                        },
                    ),
                    max_size=2,
                )
                | junk,
                "max_limit_usd": amounts,
            },
        )
        | junk,
        "featurs": junk,  # unknown top-level keys
        "version": junk,
    },
)


def names_key_path(error: ConfigError, document: Mapping[str, Any]) -> None:
    """The error names the file and a key path that starts at one of the document's own keys."""
    assert error.file == FILE
    assert error.path, f"no key path in {error}"
    assert str(error).startswith(f"{FILE}: {error.path}: "), str(error)
    assert error.reason.strip(), str(error)
    shown = [key or '""' for key in document]  # an empty key is named `""`
    assert any(error.path == key or error.path.startswith((f"{key}.", f"{key}[")) for key in shown), (
        f"{error.path!r} does not start at a key of the document ({sorted(document)})"
    )


def catch(call: Callable[[], T]) -> tuple[T | None, ConfigError | None]:
    """`(result, None)`, or `(None, the ConfigError)`: any other exception propagates and fails the test."""
    try:
        return call(), None
    except ConfigError as error:
        return None, error


def load_and_build(document: Any, lines: Mapping[str, int] | None = None) -> Config | None:
    """Validate, then build on memory:// (the fuzzed store URL is checked, not opened); None on ConfigError."""
    config, error = catch(lambda: parse_config(document, file=FILE, lines=lines))
    if error is not None:
        if not isinstance(document, dict):
            assert error.path is None
            assert "top level" in str(error)
        else:
            names_key_path(error, document)
            if lines:
                assert "(line " in str(error), str(error)
        return None
    assert config is not None
    guard, error = catch(lambda: config.model_copy(update={"store": "memory://"}).build(file=FILE, lines=lines))
    if error is not None:
        names_key_path(error, document)
        return None
    assert guard is not None
    guard.close()
    return config


@fuzz(150)
@given(config_documents)
def test_config_document_loads_or_names_the_key_path(document: dict[str, Any]) -> None:
    """A config mapping either builds a guard or raises `ConfigError` naming file and key path; nothing else."""
    load_and_build(document)


@fuzz(60)
@given(junk)
def test_a_config_that_is_not_a_mapping_is_a_config_error(document: Any) -> None:
    """Any top-level value: an empty or well-formed mapping builds, anything else is a ConfigError."""
    load_and_build(document)


def dump(document: Any) -> str:
    """YAML text of a document, ints of any length included (Python won't print ints over 4300 digits unless
    told to). Non-ASCII is escaped: with allow_unicode=True PyYAML's emitter writes NEL (U+0085) raw inside
    single quotes, where YAML folds it to a space, so 'a\\x85b' would come back 'a b'."""
    set_limit = getattr(sys, "set_int_max_str_digits", None)
    if set_limit is None:  # a Python without the limit
        return yaml.safe_dump(document, allow_unicode=False, sort_keys=False)
    limit = sys.get_int_max_str_digits()
    set_limit(0)
    try:
        return yaml.safe_dump(document, allow_unicode=False, sort_keys=False)
    finally:
        set_limit(limit)


@fuzz(80)
@given(config_documents)
def test_config_yaml_text_loads_or_names_the_key_path_and_line(document: dict[str, Any]) -> None:
    """The same documents as YAML text: a ConfigError names the key path and its line, or it builds."""
    loaded, error = catch(lambda: load_yaml(dump(document), FILE, env={}))
    if error is not None:
        # Text safe_dump wrote fails to load only on a `${VAR}` or an int too long for Python: either way at
        # a key path, with its line.
        names_key_path(error, document)
        assert "(line " in str(error), str(error)
        return
    assert loaded is not None
    data, lines = loaded
    assert isinstance(data, dict)
    load_and_build(data, lines)


# YAML syntax (flow collections, anchors and aliases, tags, block scalars, merge keys) and YAML 1.1 scalars.
YAML_CHARS = "abcdefmnorstuwy_0123456789.:-{}[],#&!'\" \n\t|>?*$%@`~=+/<\\é😀\x85\u2028"
yaml_text = st.text(alphabet=YAML_CHARS, max_size=120)
_plain_scalars = st.one_of(
    st.text(alphabet=YAML_CHARS.replace("\n", ""), max_size=20),
    st.builds("{:04d}-{:02d}-{:02d}".format, st.integers(0, 9999), st.integers(0, 99), st.integers(0, 99)),
    st.sampled_from(["190:20:30", "0x1F", "0o17", "0b101", "1_000", ".nan", "-.inf", "~", "9" * 5000]),
)
_number_like = st.from_regex(
    r"-?[0-9][0-9_]{0,6}(\.[0-9]{0,3})?|0x[0-9a-fA-F_]{0,4}|[a-z]{0,4}|_|\.nan|\.inf", fullmatch=True
)
yaml_scalars = st.one_of(
    _plain_scalars,
    st.builds(
        lambda tag, value: tag + value,
        st.sampled_from(["!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!binary ", "!!null ", "!!set ", "!!str "]),
        _plain_scalars,
    ),
    st.builds(lambda tag, value: tag + value, st.sampled_from(["!!int ", "!!float "]), _number_like),
)
yaml_documents = st.one_of(
    yaml_text,
    st.builds(
        lambda key, value: f"features:\n  f:\n    {key}: {value}\n",
        st.sampled_from([*LIMIT_KEYS, "thresholds", "expire_after", "degrade_at", "estimate_usd", "fallback"]),
        yaml_scalars,
    ),
    st.builds(lambda key, value: f"{key}: {value}\n", st.sampled_from(["store", "timezone", "ceilings"]), yaml_scalars),
)


@fuzz(200)
@given(yaml_documents)
def test_random_yaml_text_loads_or_raises_config_error(text: str) -> None:
    """YAML-ish text (flow syntax, merge keys, YAML 1.1 scalars, `${VAR}`): a ConfigError or a guard."""
    loaded, error = catch(lambda: load_yaml(text, FILE, env={}))
    if error is not None:
        assert error.file == FILE
        assert error.reason.strip()
        return
    assert loaded is not None
    load_and_build(*loaded)


# --------------------------------------------------------------------------- valid configs

valid_usd = st.one_of(st.integers(0, 100_000), st.floats(0, 100_000, allow_nan=False, allow_infinity=False))
valid_count = st.integers(0, 10**9)
# Names that are valid label values too (no NUL: the config would accept a feature named "a\x00b", but no
# call could ever use it), and no `${`, which YAML text would substitute.
# A `*` inside a name or match value is a pattern, refused by the config; `*` alone is drawn separately.
valid_names = st.text(min_size=1, max_size=40).filter(lambda n: "${" not in n and "*" not in n and "\x00" not in n)
valid_label_values = st.text(min_size=1, max_size=40).filter(
    lambda n: "${" not in n and "*" not in n and "\x00" not in n
)


def _expiry_with_a_total(block: dict[str, Any]) -> dict[str, Any]:
    """`expire_after` only where a `total` limit is (elsewhere it is a ConfigError)."""
    if "expire_after" in block and not any(key.endswith("total") or key == "total_usd" for key in block):
        return {k: v for k, v in block.items() if k != "expire_after"}
    return block


def _with_a_limit(block: dict[str, Any]) -> dict[str, Any]:
    """A ceiling needs a limit key (one without is a ConfigError)."""
    return block if any(key in LIMIT_KEYS for key in block) else {"monthly_usd": 1, **block}


def valid_limits(**extra: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "monthly_usd": valid_usd,
            "daily_usd": valid_usd,
            "hourly_usd": valid_usd,
            "total_usd": valid_usd,
            "calls_per_day": valid_count,
            "tokens_per_month": valid_count,
            "enforcement": st.sampled_from(["hard", "soft"]),
            "thresholds": st.lists(st.floats(0.01, 1.0), min_size=1, max_size=4),  # fractions in (0, 1]
            "expire_after": st.sampled_from(["7d", "12h", "30m", "1.5h", 3600, 0.5]),
            **extra,
        },
    ).map(_expiry_with_a_total)


valid_learn = st.builds(
    lambda window, samples, pct: {"window": window, "min_samples": min(samples, window), "percentile": pct},
    st.integers(1, 1000),
    st.integers(1, 1000),
    st.floats(0.01, 1.0),
)
valid_feature = valid_limits(
    estimate_usd=valid_usd,
    estimate_tokens=valid_count,
    per_customer=valid_limits().map(_with_a_limit),
    degrade_at=st.floats(0.01, 1.0),
    fallback=st.sampled_from([{"static": "busy"}, {"static": None}, {"cached": {"ttl_s": "1h"}}, {"raise": True}]),
    on_store_error=st.sampled_from(["open", "closed"]),
    on_call_error=st.sampled_from(["release", "keep"]),
    commit=st.just("sync"),
    max_call_usd=valid_usd,
    estimator=st.sampled_from(["fixed", "learned"]),
    learn=valid_learn,
)
valid_ceiling_matches = st.dictionaries(
    st.sampled_from(["feature", "customer", "run", "vendor", "user", "org"]),
    st.just("*") | valid_label_values,
    max_size=2,
).map(lambda m: {"team": "*", **m})  # `team` keeps them apart from the features: and customers: ceilings
valid_configs = st.fixed_dictionaries(
    {"store": st.just("memory://")},
    optional={
        "timezone": st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
        "thresholds": st.lists(st.floats(0.05, 1.0), min_size=1, max_size=4),  # fractions in (0, 1]
        "on_store_error": st.sampled_from(["open", "closed"]),
        "on_call_error": st.sampled_from(["release", "keep"]),
        "max_label_length": st.integers(64, 2000),
        "features": st.dictionaries(valid_names | st.just("*"), valid_feature, max_size=4),
        "customers": st.dictionaries(valid_names | st.just("*"), valid_limits().map(_with_a_limit), max_size=3),
        "ceilings": st.lists(
            st.builds(
                lambda m, limits: {"match": m, **limits}, valid_ceiling_matches, valid_limits().map(_with_a_limit)
            ),
            max_size=3,
            unique_by=lambda c: tuple(sorted(c["match"].items())),
        ),
        "notifiers": st.lists(
            st.sampled_from(
                [
                    {"log": {}},
                    {"log": {"level": "INFO", "on": ["kill"]}},
                    # Built, never sent: only a limit change would fire it (no network in this test).
                    {"webhook": {"url": "https://hooks.example/x", "on": ["limit_changed"]}},
                ]
            ),
            max_size=2,
        ),
        "killswitch": st.fixed_dictionaries(
            {},
            optional={"cache_ms": st.floats(0, 10_000), "exempt_paths": st.lists(texts, max_size=2)},
        ),
        "admin": st.fixed_dictionaries(
            {},
            optional={
                "tokens": st.lists(
                    st.fixed_dictionaries(
                        {
                            "name": valid_names,
                            "token": st.text(min_size=16, max_size=40),
                            "role": st.sampled_from(["read", "operator", "admin"]),
                        }
                    ),
                    max_size=2,
                ),
                "max_limit_usd": valid_usd,
            },
        ),
    },
)


def expected_ceilings(document: Mapping[str, Any]) -> int:
    """How many ceilings the document defines: a feature with a limit key, each per_customer, customer, ceiling."""
    features = document.get("features", {})
    return (
        sum(1 for f in features.values() if set(f) & set(LIMIT_KEYS))
        + sum(1 for f in features.values() if "per_customer" in f)
        + len(document.get("customers", {}))
        + len(document.get("ceilings", []))
    )


@fuzz(100)
@given(valid_configs)
def test_valid_configs_load_round_trip_through_yaml_and_build_a_working_guard(document: dict[str, Any]) -> None:
    """Valid documents load; YAML text of them loads to the same Config; the guard reserves and reports limits."""
    config = parse_config(document, file=FILE)
    data, lines = load_yaml(dump(document), FILE, env={})
    assert parse_config(data, file=FILE, lines=lines) == config
    guard = config.build(file=FILE, lines=lines)
    try:
        assert len(guard.ceilings) == expected_ceilings(document)
        rows = guard.status().ceilings
        for name, feature in document.get("features", {}).items():
            if name == "*":
                continue
            if "monthly_usd" in feature:
                monthly = [
                    r
                    for r in rows
                    if r.ceiling == encode_scope({"feature": name}) and (r.period, r.unit) == ("month", "usd")
                ]
                assert [r.limit for r in monthly] == [micros_to_usd(to_micros(feature["monthly_usd"], round_up=False))]
                assert [r.spent for r in monthly] == [0.0]
            assert isinstance(guard.check(name, customer="acme"), Decision)
            try:
                with guard.reserve(name, customer="acme", estimate_usd=0) as reservation:
                    reservation.commit(0)
            except BudgetExceeded:
                pass  # a limit of 0 blocks even a free call
    finally:
        guard.close()


# --------------------------------------------------------------------------- inputs the fuzzers first failed on


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"thresholds": [HUGE]}, id="thresholds"),
        pytest.param({"features": {"f": {"degrade_at": HUGE}}}, id="degrade_at"),
        pytest.param({"features": {"f": {"monthly_usd": 1, "expire_after": HUGE}}}, id="expire_after"),
        pytest.param({"features": {"f": {"fallback": {"cached": {"ttl_s": HUGE}}}}}, id="ttl_s"),
        pytest.param({"customers": {"*": {"monthly_usd": 1, "thresholds": [0.5, HUGE]}}}, id="customer-thresholds"),
        pytest.param({"killswitch": {"cache_ms": HUGE}}, id="cache_ms"),
        pytest.param({"store_timeout_ms": HUGE}, id="store_timeout_ms"),
        pytest.param({"features": BEYOND_STR_LIMIT}, id="features-is-a-huge-int"),
        pytest.param({"timezone": BEYOND_STR_LIMIT}, id="timezone-is-a-huge-int"),
        pytest.param({"features": {"f": {"monthly_usd": -BEYOND_STR_LIMIT}}}, id="negative-huge-limit"),
        pytest.param({"": 1}, id="empty-unknown-key"),
        pytest.param({"store": "memory://", "notifiers": [{"webhook": None}]}, id="webhook-without-options"),
    ],
)
def test_inputs_that_once_escaped_as_other_exceptions_are_config_errors(
    document: dict[str, Any], tmp_path: Path
) -> None:
    """Ints beyond any float (OverflowError) or too long to print (ValueError), an empty unknown key (no path),
    a notifier without options (StopIteration): each is a ConfigError naming its key path. SQLite is the store
    because it applies `store_timeout_ms` (memory:// ignores it)."""
    document = {"store": f"sqlite:///{tmp_path / 'costguard.db'}", **document}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, file=FILE).build(file=FILE)
    names_key_path(caught.value, document)
    assert "Exceeds the limit" not in str(caught.value)  # Python's int-to-text error is no config message


def test_a_log_notifier_without_options_builds_with_its_defaults() -> None:
    """YAML `notifiers: [- log:]` (options null) is a log notifier with default options."""
    text = "store: memory://\nnotifiers:\n  - log:\n"
    data, lines = load_yaml(text, FILE, env={})
    guard = parse_config(data, file=FILE, lines=lines).build(file=FILE, lines=lines)
    try:
        assert len(guard.notifiers) == 1
    finally:
        guard.close()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("features: {f: {monthly_usd: 2026-13-01}}\n", id="month-13"),
        pytest.param("features: {f: {monthly_usd: 2026-02-30}}\n", id="feb-30"),
        pytest.param("features: {f: {monthly_usd: 0000-01-01}}\n", id="year-0"),
        pytest.param("features: {f: {monthly_usd: !!int abc}}\n", id="tag-int"),
        pytest.param("features: {f: {monthly_usd: !!float abc}}\n", id="tag-float"),
        pytest.param("features: {f: {monthly_usd: !!bool abc}}\n", id="tag-bool"),
        pytest.param("features: {f: {monthly_usd: !!timestamp abc}}\n", id="tag-timestamp"),
        pytest.param("features: {f: {monthly_usd: " + "9" * 5000 + "}}\n", id="int-of-5000-digits"),
        pytest.param("features: &x {f: *x}\n", id="recursive-alias"),
    ],
)
def test_yaml_values_python_cannot_build_are_config_errors(text: str) -> None:
    """Valid YAML syntax whose value PyYAML's constructors choke on (ValueError, KeyError, AttributeError,
    RecursionError before): a ConfigError with the file, and the key path where the loader knows it."""
    with pytest.raises(ConfigError) as caught:
        load_yaml(text, FILE, env={})
    assert caught.value.file == FILE
    assert caught.value.path in (None, "features.f.monthly_usd"), str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a: !!int\n", id="int"),
        pytest.param("features: {f: {monthly_usd: !!float }}\n", id="float"),
        pytest.param("a: !!int _\n", id="int-underscore"),
    ],
)
def test_an_empty_int_or_float_tag_is_a_config_error(text: str) -> None:
    """`monthly_usd: !!float` with nothing after the tag (PyYAML's constructor raised IndexError): a
    ConfigError with the file, never a crash."""
    with pytest.raises(ConfigError) as caught:
        load_yaml(text, FILE, env={})
    assert caught.value.file == FILE


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite:///bad\x00name.db", "redis://", "rediss://"]
)
def test_store_urls_that_cannot_open_are_config_errors(url: str) -> None:
    """In-memory SQLite (TypeError before), a NUL in the path and a Redis URL without a host (ValueError
    before): building the guard is a ConfigError about `store`."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"store": url}, file=FILE).build(file=FILE)
    assert caught.value.path == "store", str(caught.value)


# --------------------------------------------------------------------------- label values on every store


def note(what: str) -> None:
    """Count an outcome in hypothesis' statistics (`--hypothesis-show-statistics`); a no-op in plain tests."""
    if currently_in_test_context():
        event(what)


_features = itertools.count()


def new_feature() -> str:
    """A feature of its own per example: examples share the test's store but never a counter."""
    return f"fuzz{next(_features)}"


CounterKey = tuple[str, tuple[tuple[str, str], ...], str]  # (ceiling id, bound labels, unit)
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass
class Held:
    """An open reservation and the counters it holds: (counter key, amount) per counter."""

    reservation: Reservation
    holds: list[tuple[CounterKey, int]]


@dataclass
class Model:
    """Pure-Python expected spend per (ceiling, bound label values, unit): [committed, reserved]."""

    feature: str
    usd_limits: tuple[int, int, int]  # {feature}, {feature, customer: *}, {feature, customer: *, tenant: *}
    calls_per_day: int  # on {feature, customer: *}
    counters: dict[CounterKey, list[int]] = field(default_factory=dict)
    touched: set[CounterKey] = field(default_factory=set)
    held: list[Held] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    customers: set[str] = field(default_factory=set)
    pairs: set[tuple[str, str]] = field(default_factory=set)

    def ceilings(self) -> tuple[Ceiling, Ceiling, Ceiling]:
        f = self.feature
        total, per_customer, per_tenant = self.usd_limits
        return (
            Ceiling(make_match({"feature": f}), (Limit(Period.MONTH, Unit.USD, total),)),
            Ceiling(
                make_match({"feature": f, "customer": "*"}),
                (Limit(Period.MONTH, Unit.USD, per_customer), Limit(Period.DAY, Unit.CALLS, self.calls_per_day)),
            ),
            Ceiling(
                make_match({"feature": f, "customer": "*", "tenant": "*"}), (Limit(Period.MONTH, Unit.USD, per_tenant),)
            ),
        )

    @staticmethod
    def valid(value: object) -> bool:
        """What `normalize_labels` accepts: absent, or 1 to max_label_length characters without NUL or a
        surrogate (no backend stores those faithfully)."""
        if value is None:
            return True
        text = str(value)
        return 0 < len(text) <= DEFAULT_MAX_LABEL_LENGTH and not UNSTORABLE.search(text)

    def counters_for(self, customer: str | None, tenant: str | None, usd: int) -> list[tuple[CounterKey, int, int]]:
        """(key, amount, limit) of every counter a call with these labels must fit, written independently of
        `Ceiling.bind`: an absent label means the per-customer / per-tenant ceilings do not apply."""
        total, per_customer, per_tenant = self.ceilings()
        out: list[tuple[CounterKey, int, int]] = [
            ((total.id, (("feature", self.feature),), "usd"), usd, self.usd_limits[0])
        ]
        if customer is not None:
            scope = tuple(sorted({"feature": self.feature, "customer": customer}.items()))
            out.append(((per_customer.id, scope, "usd"), usd, self.usd_limits[1]))
            out.append(((per_customer.id, scope, "calls"), 1, self.calls_per_day))
            if tenant is not None:
                scope = tuple(sorted({"feature": self.feature, "customer": customer, "tenant": tenant}.items()))
                out.append(((per_tenant.id, scope, "usd"), usd, self.usd_limits[2]))
        return out

    def total(self, key: CounterKey) -> int:
        committed, reserved = self.counters.get(key, [0, 0])
        return committed + reserved

    def reserve(self, guard: Guard, customer: object, tenant: object, usd: int) -> Reservation | None:
        """Reserve through the guard and in the model; asserts the guard decides exactly as the model does."""
        if not (self.valid(customer) and self.valid(tenant)):
            note("reserve: LabelError")
            with pytest.raises(LabelError):
                guard.reserve(self.feature, estimate_usd=Decimal(usd).scaleb(-6), customer=customer, tenant=tenant)
            return None
        c = None if customer is None else str(customer)
        t = None if tenant is None else str(tenant)
        wanted = self.counters_for(c, t, usd)
        self.touched.update(key for key, _, _ in wanted)
        if c is not None:
            self.customers.add(c)
            if t is not None:
                self.pairs.add((c, t))
        full = [
            key for key, amount, limit in wanted if not (self.total(key) + amount <= limit and self.total(key) < limit)
        ]
        if full:
            note("reserve: BudgetExceeded")
            with pytest.raises(BudgetExceeded) as caught:
                guard.reserve(self.feature, estimate_usd=Decimal(usd).scaleb(-6), customer=customer, tenant=tenant)
            assert tuple(sorted(caught.value.scope.items())) in {key[1] for key in full}, caught.value.scope
            return None
        note("reserve: allowed")
        reservation = guard.reserve(
            self.feature, estimate_usd=Decimal(usd).scaleb(-6), customer=customer, tenant=tenant
        )
        assert reservation.decision.allowed
        for key, amount, _ in wanted:
            self.counters.setdefault(key, [0, 0])[1] += amount
        self.held.append(Held(reservation, [(key, amount) for key, amount, _ in wanted]))
        return reservation

    def settle(self, index: int, actual: int | None) -> None:
        """Commit `actual` micro-dollars (None: release) on one held reservation, in the guard and the model."""
        if not self.held:
            return
        held = self.held.pop(index % len(self.held))
        if actual is None:
            held.reservation.release()
        else:
            held.reservation.commit(Decimal(actual).scaleb(-6))
        for key, amount in held.holds:
            counter = self.counters[key]
            counter[1] -= amount
            if actual is not None:
                counter[0] += actual if key[2] == "usd" else 1
        self.settled.append(held.reservation.id)

    def expected(self, **wanted: str) -> dict[CounterKey, tuple[int, int]]:
        """Non-zero counters whose bound labels include `wanted`, as (spent incl. reserved, reserved)."""
        out = {}
        for key, (committed, reserved) in self.counters.items():
            scope = dict(key[1])
            if (committed or reserved) and all(scope.get(k) == v for k, v in wanted.items()):
                out[key] = (committed + reserved, reserved)
        return out

    def assert_status(self, status: Status, **wanted: str) -> None:
        """The guard's rows equal the model exactly; zero rows only for counters some call touched."""
        seen: dict[CounterKey, tuple[int, int]] = {}
        zeros: set[CounterKey] = set()
        for row in status.ceilings:
            key = (row.ceiling, tuple(sorted(row.labels.items())), row.unit)
            assert key not in seen and key not in zeros, f"two rows for {key}"
            scale = 1_000_000 if row.unit == "usd" else 1
            spent, reserved = round(row.spent * scale), round(row.reserved * scale)
            if spent or reserved:
                seen[key] = (spent, reserved)
            else:
                zeros.add(key)
        assert seen == self.expected(**wanted)
        always = (self.ceilings()[0].id, (("feature", self.feature),), "usd")  # listed even when never used
        assert zeros <= self.touched | {always}, f"rows for scopes no call touched: {zeros - self.touched}"

    def check(self, guard: Guard) -> None:
        self.assert_status(guard.status(feature=self.feature))

    def check_filters(self, guard: Guard) -> None:
        """`status(customer=…)` and `status(customer=…, tenant=…)` show exactly that scope's counters."""
        for customer in sorted(self.customers):
            self.assert_status(guard.status(feature=self.feature, customer=customer), customer=customer)
        for customer, tenant in sorted(self.pairs):
            self.assert_status(
                guard.status(feature=self.feature, customer=customer, tenant=tenant), customer=customer, tenant=tenant
            )


def open_guard(store_url: str, model: Model) -> Guard:
    return make_guard(*model.ceilings(), store=open_test_store(store_url))


EXAMPLES_PER_STORE = 25


class StoreURLs:
    """Store URLs of one kind for a test's examples. `status()` lists every counter of the current periods, so
    one store for 2000 examples makes each check slower than the last: a fresh store every 25 examples."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.urls: list[str] = []
        self.used = 0

    def next(self) -> str:
        if self.used % EXAMPLES_PER_STORE == 0:
            directory = self.directory / f"store{len(self.urls)}"
            directory.mkdir()
            self.urls.append(store_url_for(self.kind, directory))
        self.used += 1
        return self.urls[-1]

    def cleanup(self) -> None:
        for url in self.urls:
            if self.kind == "postgres":
                drop_tables(url)
            elif self.kind == "redis":
                drop_namespace(url)


@pytest.fixture(params=STORE_KINDS)
def store_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreURLs]:
    """Each store kind in turn (real Redis and PostgreSQL by marker, as `store_url`), for many examples."""
    urls = StoreURLs(request.param, tmp_path)
    yield urls
    urls.cleanup()


# Label values: punctuation that separates encoded keys, controls, unicode, empty, and lengths around the limit.
SEPARATORS = ":|{}=,*%#\\\"'/ \n\r\t\x00\x1b\x7f\u2028\u202e\ufeff\u0301é😀"
_tricky = st.text(alphabet=st.sampled_from(SEPARATORS) | st.sampled_from("ab"), max_size=12)
_around_the_limit = st.builds(
    lambda char, n: char * n,
    st.sampled_from(["x", "é", "😀", ":", "%"]),
    st.sampled_from([63, 64, 65, 255, 256, 257, 300, 10_000]),
)
_surrogates = st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3)
label_values: st.SearchStrategy[object] = st.one_of(
    _tricky,
    st.text(max_size=40),
    _around_the_limit,
    st.sampled_from(["", "*", "a:b", "a,tenant=b", "customer=a", "{a}", "a%3Ab", "#", "1", "a\x00", "\ud800\udc00"]),
    st.integers(-5, 5),
    _surrogates,
    st.builds(lambda a, b: a + b, st.text(max_size=5), _surrogates),
)


label_calls = st.lists(
    st.tuples(
        label_values, st.none() | label_values, st.sampled_from([0, 1_000, 12_345]), st.sampled_from([0, 7, 20_000])
    ),
    min_size=1,
    max_size=4,
)


@fuzz(12, store=True)
@given(calls=label_calls)
def test_label_values_are_rejected_clearly_or_counted_exactly(
    store_urls: StoreURLs, calls: list[tuple[object, object, int, int]]
) -> None:
    """Any customer / tenant value: `LabelError` exactly when empty, too long or holding NUL or a surrogate;
    otherwise reserved, committed and shown by `status()` under exactly that value, on every store."""
    model = Model(new_feature(), usd_limits=(10**12, 10**12, 10**12), calls_per_day=10**9)
    guard = open_guard(store_urls.next(), model)
    try:
        for customer, tenant, estimate, actual in calls:
            if model.reserve(guard, customer, tenant, estimate) is not None:
                model.settle(-1, actual)
            model.check(guard)
        model.check_filters(guard)
    finally:
        guard.close()


def test_nul_and_surrogate_label_values_are_label_errors_on_every_store(store_url: str) -> None:
    """NUL and surrogates are LabelErrors before any store is touched. They used to differ per store: the SQL
    stores raised UnicodeEncodeError for a surrogate, PostgreSQL failed open on a NUL and never counted the
    commit (it stayed in the write buffer for good), and Redis reported a surrogate pair as the astral
    character it encodes, another customer's name."""
    model = Model(new_feature(), usd_limits=(10**9, 10**9, 10**9), calls_per_day=100)
    guard = open_guard(store_url, model)
    try:
        for value in ("\x00", "a\x00", "\udc80", "a\ud800b", "\ud800\udc00", "a\udbff\udfffb"):
            assert not Model.valid(value)
            assert model.reserve(guard, value, None, 10_000) is None  # asserts the LabelError
            assert model.reserve(guard, "a", value, 10_000) is None
        astral = "\ud800\udc00".encode("utf-16", "surrogatepass").decode("utf-16")
        assert astral == "\U00010000"
        assert model.reserve(guard, astral, None, 10_000) is not None  # the real character is fine
        model.settle(0, 7_000)
        model.check(guard)
        model.check_filters(guard)
        assert guard.pending == 0
    finally:
        guard.close()


# --------------------------------------------------------------------------- no cross-scope write

# Values whose naive encodings collide: separators, the wildcard, percent-encoding, key=value lookalikes,
# case and normalization twins, an int and its string, and long values stored as digests.
CUSTOMERS: list[object] = [
    "a",
    "b",
    "a:b",
    "a|b",
    "a,b",
    "*",
    "a=b",
    "{a}",
    "a%3Ab",
    "a,tenant=b",
    "customer=a",
    "a\n",
    "A",
    "é",
    "e\u0301",
    "1",
    1,
    "x" * 65,
    "x" * 66,
    "",
    "x" * 257,
    "a\x00",
    None,
]
TENANTS: list[object] = [None, None, "a", "b", "a:b", "*", "a,b", "b|a", "", "{b}"]
ESTIMATES = [0, 5_000, 10_000, 20_000]
# Half the calls go to three colliding customers, so counters fill up, block and get compared often.
customers = st.sampled_from(["a", "b", "a:b"]) | st.sampled_from(CUSTOMERS)
ACTUALS = [0, 5_000, 12_000, 30_000]

_reserve = st.tuples(st.just("reserve"), customers, st.sampled_from(TENANTS), st.sampled_from(ESTIMATES))
_call = st.tuples(
    st.just("call"),
    customers,
    st.sampled_from(TENANTS),
    st.sampled_from(ESTIMATES),
    st.sampled_from(ACTUALS),
)
_commit = st.tuples(st.just("commit"), st.integers(0, 20), st.sampled_from(ACTUALS))
_release = st.tuples(st.just("release"), st.integers(0, 20))
_retry = st.tuples(st.just("retry"), st.integers(0, 20), st.sampled_from(ACTUALS))
steps = st.lists(st.one_of(_reserve, _call, _call, _commit, _release, _retry), min_size=4, max_size=30)


def run_steps(guard: Guard, model: Model, plan: list[tuple[Any, ...]]) -> Iterator[None]:
    """Apply each step to the guard and the model; yields after each so the caller can compare."""
    for step in plan:
        kind = step[0]
        if kind == "reserve":
            model.reserve(guard, step[1], step[2], step[3])
        elif kind == "call":
            if model.reserve(guard, step[1], step[2], step[3]) is not None:
                model.settle(-1, step[4])
        elif kind == "commit":
            model.settle(step[1], step[2])
        elif kind == "release":
            model.settle(step[1], None)
        elif kind == "retry" and model.settled:
            # A retried commit or release of a settled reservation is a no-op, by id.
            reservation_id = model.settled[step[1] % len(model.settled)]
            assert guard.commit(reservation_id, Decimal(step[2]).scaleb(-6)) is False
            assert guard.release(reservation_id) is False
        yield


@fuzz(15, store=True)
@given(plan=steps)
def test_no_call_changes_another_scopes_counter(store_urls: StoreURLs, plan: list[tuple[Any, ...]]) -> None:
    """After every step, every counter of every (ceiling, customer[, tenant]) equals the model: a call for
    customer "a:b" never moves the counter of "a" or "b", and nothing appears for a scope no call touched."""
    model = Model(new_feature(), usd_limits=(100_000, 30_000, 20_000), calls_per_day=3)
    guard = open_guard(store_urls.next(), model)
    try:
        for _ in run_steps(guard, model, plan):
            model.check(guard)
        model.check_filters(guard)
        while model.held:  # what is still open is released: back to the committed spend alone
            model.settle(0, None)
        model.check(guard)
    finally:
        guard.close()


def test_the_collision_alphabet_encodes_to_distinct_counters() -> None:
    """Sanity check of the generator: the valid customer values are pairwise distinct counters."""
    valid = {str(c) for c in CUSTOMERS if Model.valid(c) and c is not None}
    assert len({encode_scope({"customer": c}) for c in valid}) == len(valid)

"""Money in micro-dollars, label validation, injective scope encoding and ceiling binding."""

from __future__ import annotations

import math
import re
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from costguard.errors import LabelError
from costguard.model import (
    DEFAULT_MAX_LABEL_LENGTH,
    WILDCARD,
    Ceiling,
    Limit,
    Period,
    Unit,
    encode_scope,
    literal_scope,
    make_match,
    micros_to_usd,
    normalize_labels,
    to_micros,
)

# --------------------------------------------------------------------------- money


@pytest.mark.parametrize(
    ("amount", "micros"),
    [
        (1, 1_000_000),
        (0, 0),
        (0.0, 0),
        (-0.0, 0),
        (1.5, 1_500_000),
        (0.004, 4000),
        (0.02, 20_000),
        (Decimal("0.004"), 4000),
        (Decimal("12.345678"), 12_345_678),
        ("0.004", 4000),
        ("  2.5 ", 2_500_000),
        ("1e-6", 1),
        (10**12, 10**18),
        (3, 3_000_000),
    ],
)
def test_to_micros_accepts_float_int_decimal_str(amount: object, micros: int) -> None:
    result = to_micros(amount)  # type: ignore[arg-type]
    assert result == micros
    assert type(result) is int


def test_to_micros_0_004_is_exactly_4000_both_roundings() -> None:
    # 0.004 as a binary float is 0.004000000000000000083…; it must not round up to 4001.
    assert to_micros(0.004) == 4000
    assert to_micros(0.004, round_up=False) == 4000
    assert to_micros(0.1 + 0.2) == 300_001  # 0.30000000000000004 really is above 0.3: rounded up
    assert to_micros(0.1 + 0.2, round_up=False) == 300_000


@pytest.mark.parametrize(
    ("amount", "micros"),
    [
        (0.0000001, 1),
        ("0.0000001", 1),
        (Decimal("0.0000001"), 1),
        (0.0000009, 1),
        (0.0000011, 2),
        ("0.000001000000001", 2),
        (1e-30, 1),
        ("1.0000001", 1_000_001),
    ],
)
def test_estimates_round_up_to_the_micro_dollar(amount: object, micros: int) -> None:
    assert to_micros(amount) == micros  # type: ignore[arg-type]
    assert to_micros(amount, round_up=True) == micros  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "micros"),
    [
        ("0.0000001", 0),
        ("0.0000004", 0),
        ("0.0000005", 1),
        ("0.0000015", 2),
        ("0.0000025", 3),  # half *up*, not banker's rounding
        (Decimal("1.0000005"), 1_000_001),
        (Decimal("1.0000004999"), 1_000_000),
    ],
)
def test_round_up_false_rounds_half_up(amount: object, micros: int) -> None:
    assert to_micros(amount, round_up=False) == micros  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "amount",
    [
        -1,
        -0.000001,
        "-0.01",
        Decimal("-1"),
        math.nan,
        -math.nan,
        math.inf,
        -math.inf,
        float("1e309"),
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "",
        "   ",
        "abc",
        "1,5",
        "$1",
        True,
        False,
        None,
        [1],
        {"usd": 1},
        b"1",
        1 + 0j,
    ],
)
def test_to_micros_rejects_bad_amounts_with_value_error(amount: object) -> None:
    with pytest.raises(ValueError, match="amount"):
        to_micros(amount)  # type: ignore[arg-type]


def test_to_micros_error_names_what() -> None:
    with pytest.raises(ValueError, match="estimate_usd"):
        to_micros(-1, what="estimate_usd")
    with pytest.raises(ValueError, match="estimate_usd"):
        to_micros(None, what="estimate_usd")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("micros", "usd"),
    [
        (0, 0.0),
        (1, 0.000001),
        (4000, 0.004),
        (1_000_000, 1.0),
        (1_234_567, 1.234567),
        (20_000, 0.02),
        (123_456_789_012, 123456.789012),
    ],
)
def test_micros_to_usd_rounds_to_6_places(micros: int, usd: float) -> None:
    result = micros_to_usd(micros)
    assert isinstance(result, float)
    assert result == usd
    assert result == round(result, 6)


@given(st.integers(min_value=0, max_value=10**15))
def test_micros_round_trip(micros: int) -> None:
    usd = micros_to_usd(micros)
    assert usd == round(usd, 6)
    assert to_micros(usd, round_up=False) == micros


def test_one_dollar_cap_admits_exactly_250_calls_at_0_004() -> None:
    cap = to_micros(1.00)
    call = to_micros(0.004)
    assert cap == 1_000_000
    assert call == 4000
    assert cap // call == 250
    assert call * 250 == cap
    assert call * 251 > cap
    # Summing call by call (as counters do) lands exactly on the cap, never a float drift.
    spent = 0
    admitted = 0
    while spent + call <= cap:
        spent += call
        admitted += 1
    assert admitted == 250
    assert spent == cap
    assert micros_to_usd(spent) == 1.0


def test_limit_display() -> None:
    assert Limit(Period.MONTH, Unit.USD, 4000).display == 0.004
    assert Limit(Period.DAY, Unit.CALLS, 250).display == 250.0
    assert Limit(Period.TOTAL, Unit.TOKENS, 10).display == 10.0


# --------------------------------------------------------------------------- labels


def test_normalize_labels_ints_become_strings_and_none_is_dropped() -> None:
    out = normalize_labels({"feature": "f", "user": 42, "team": None, "run": 0})
    assert out == {"feature": "f", "user": "42", "run": "0"}
    assert all(type(v) is str for v in out.values())


def test_normalize_labels_keeps_unicode_and_punctuation_values() -> None:
    labels = {"customer": "a:b,c=d{e}|f*\n", "team": "équipe-東京-😀"}
    assert normalize_labels(labels) == labels


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "a b", "a|b", "a=b", "a:b", "a,b", "a*", "ümlaut", "a\n", "-lead", ".lead", "x" * 65, 7, None],
)
def test_normalize_labels_rejects_bad_names(name: object) -> None:
    with pytest.raises(LabelError, match="label name"):
        normalize_labels({name: "v"})  # type: ignore[dict-item]


@pytest.mark.parametrize("name", ["a", "_x", "feature", "a.b-c_d", "A9", "x" * 64])
def test_normalize_labels_accepts_good_names(name: str) -> None:
    assert normalize_labels({name: "v"}) == {name: "v"}


@pytest.mark.parametrize("value", [1.5, 0.0, True, False, b"bytes", ["x"], {"a": "b"}, Decimal("1"), object()])
def test_normalize_labels_rejects_non_string_values(value: object) -> None:
    with pytest.raises(LabelError, match="'customer'"):
        normalize_labels({"customer": value})


def test_normalize_labels_rejects_empty_value() -> None:
    with pytest.raises(LabelError, match="'customer'"):
        normalize_labels({"customer": ""})


def test_normalize_labels_length_limit() -> None:
    ok = "x" * DEFAULT_MAX_LABEL_LENGTH
    assert normalize_labels({"customer": ok}) == {"customer": ok}
    with pytest.raises(LabelError) as info:
        normalize_labels({"customer": ok + "x"})
    message = str(info.value)
    assert "'customer'" in message
    assert str(DEFAULT_MAX_LABEL_LENGTH) in message


def test_normalize_labels_custom_max_length() -> None:
    assert normalize_labels({"run": "x" * 10_000}, max_length=10_000) == {"run": "x" * 10_000}
    with pytest.raises(LabelError) as info:
        normalize_labels({"run": "abcdef"}, max_length=5)
    assert "'run'" in str(info.value)
    assert "5" in str(info.value)


def test_label_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        normalize_labels({"customer": ""})


# --------------------------------------------------------------------------- scope encoding

label_names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.-]{0,20}\Z")
nasty_text = st.text(alphabet=st.sampled_from(list(":,={}|*%#\n\r\t =a1é東😀\\/\"' ")), min_size=1, max_size=12)
any_value = st.one_of(
    nasty_text,
    st.text(min_size=1, max_size=80),
    st.text(min_size=1, max_size=10_000),
    st.text(alphabet=st.sampled_from(list("ab:|")), min_size=60, max_size=70),  # around the hashing threshold
)
label_dicts = st.dictionaries(label_names, any_value, max_size=4)
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@PROPERTY
@given(label_dicts, label_dicts)
@example({"a": "b:c"}, {"a:b": "c"})
@example({"a": "b,c=d"}, {"a": "b", "c": "d"})
@example({"a": "b:c", "d": "e"}, {"a": "b", "d": "c:e"})
@example({"a": "x" * 65}, {"a": "#" + "0" * 64})
@example({"a": "%2A"}, {"a": "*"})
def test_literal_scope_is_injective(one: dict[str, str], two: dict[str, str]) -> None:
    if one != two:
        assert literal_scope(one) != literal_scope(two)
    else:
        assert literal_scope(one) == literal_scope(two)


@PROPERTY
@given(label_dicts, label_dicts)
@example({"a": "*"}, {"a": "%2A"})
@example({"a": "*"}, {"a": "**"})
@example({"a": "b,c=*"}, {"a": "b", "c": "*"})
def test_encode_scope_is_injective(one: dict[str, str], two: dict[str, str]) -> None:
    if one != two:
        assert encode_scope(one) != encode_scope(two)
    else:
        assert encode_scope(one) == encode_scope(two)


def test_colon_collisions_are_distinct() -> None:
    # {"a": "b:c"} vs {"a:b": "c"}: the name isn't a valid label, but the encoder must still keep them apart.
    assert literal_scope({"a": "b:c"}) != literal_scope({"a:b": "c"})
    assert encode_scope({"a": "b:c"}) != encode_scope({"a:b": "c"})
    # (a:b, c) vs (a, b:c) as the values of two labels.
    first = {"customer": "a:b", "team": "c"}
    second = {"customer": "a", "team": "b:c"}
    assert literal_scope(first) != literal_scope(second)
    assert encode_scope(first) != encode_scope(second)
    # The same with the separators the encoding itself uses.
    assert literal_scope({"customer": "a,team=b"}) != literal_scope({"customer": "a", "team": "b"})
    assert literal_scope({"customer": "a|b", "team": "c"}) != literal_scope({"customer": "a", "team": "b|c"})


def test_encoding_is_order_independent() -> None:
    assert literal_scope({"a": "1", "b": "2"}) == literal_scope({"b": "2", "a": "1"})
    assert encode_scope({"a": "*", "b": "2"}) == encode_scope({"b": "2", "a": "*"})


def test_literal_star_is_data_in_literal_scope_but_wildcard_in_encode_scope() -> None:
    assert encode_scope({"customer": WILDCARD}) == "customer=*"
    assert literal_scope({"customer": WILDCARD}) != "customer=*"
    assert literal_scope({"customer": "*"}) != literal_scope({"customer": "%2A"})


def test_empty_scope_encodes_to_empty_string() -> None:
    assert encode_scope({}) == ""
    assert literal_scope({}) == ""


@PROPERTY
@given(label_dicts)
@example({"customer": "a|b\nc\r\n", "team": "x" * 10_000})
def test_encoded_scopes_never_contain_separator_or_newline(labels: dict[str, str]) -> None:
    for encoded in (literal_scope(labels), encode_scope(labels)):
        assert "|" not in encoded
        assert "\n" not in encoded
        assert "\r" not in encoded


@PROPERTY
@given(label_dicts)
@example({"customer": "x" * 10_000, "team": "|" * 10_000, "user": "😀" * 10_000, "run": "\n" * 10_000})
@example({"customer": "😀" * 64, "team": "é" * 64})
def test_encoded_scopes_stay_short_for_long_values(labels: dict[str, str]) -> None:
    for encoded in (literal_scope(labels), encode_scope(labels)):
        assert len(encoded) < 1000


def test_ten_kilobyte_values_are_hashed_and_distinct() -> None:
    a = "x" * 10_000
    b = "x" * 9_999 + "y"
    assert len(literal_scope({"customer": a})) < 1000
    assert literal_scope({"customer": a}) != literal_scope({"customer": b})
    assert encode_scope({"customer": a}) != encode_scope({"customer": b})


def test_short_multibyte_values_keep_keys_short() -> None:
    # 64 four-byte characters are "short" by length but percent-encode to 768 characters each.
    labels = {"customer": "😀" * 64, "team": "😀" * 64, "user": "😀" * 64}
    assert len(normalize_labels(labels)) == 3
    assert len(literal_scope(labels)) < 1000
    assert len(encode_scope(labels)) < 1000


@pytest.mark.parametrize(
    ("value", "what"),
    [("a\x00", "NUL character at position 1"), ("\udc80", "U+DC80 at position 0"), ("a\ud800\udc00", "U+D800")],
)
def test_nul_and_surrogates_are_a_label_error_naming_the_label(value: str, what: str) -> None:
    # PostgreSQL can't store NUL; surrogates don't encode as UTF-8 and a pair would read back as another
    # character (another customer) after a JSON round trip. Every store gets the same clear refusal.
    with pytest.raises(LabelError, match=f"label 'customer' contains .*{re.escape(what)}"):
        normalize_labels({"customer": value})


def test_lone_surrogate_value_is_rejected_or_safely_encoded() -> None:
    # Strings decoded with errors="surrogateescape" can carry lone surrogates.
    try:
        labels = normalize_labels({"customer": "\udc80"})
    except LabelError:
        return
    assert literal_scope(labels) != literal_scope({"customer": "\udc81"})
    assert "|" not in literal_scope(labels)


# --------------------------------------------------------------------------- Ceiling.bind


def _ceiling(match: dict[str, str], exclude: dict[str, set[str]] | None = None) -> Ceiling:
    return Ceiling(
        match=make_match(match),
        limits=(Limit(Period.MONTH, Unit.USD, 1_000_000),),
        exclude=tuple((k, frozenset(v)) for k, v in sorted((exclude or {}).items())),
    )


def test_bind_wildcard_binds_each_value() -> None:
    ceiling = _ceiling({"feature": "support", "customer": "*"})
    assert ceiling.bind({"feature": "support", "customer": "acme"}) == {"feature": "support", "customer": "acme"}
    assert ceiling.bind({"feature": "support", "customer": "globex", "team": "t"}) == {
        "feature": "support",
        "customer": "globex",
    }
    assert ceiling.bind({"feature": "other", "customer": "acme"}) is None


def test_bind_absent_label_means_ceiling_does_not_apply() -> None:
    ceiling = _ceiling({"feature": "support", "customer": "*"})
    assert ceiling.bind({"feature": "support"}) is None
    assert ceiling.bind({}) is None
    assert _ceiling({"vendor": "twilio"}).bind({"feature": "sms"}) is None


def test_bind_literal_match() -> None:
    ceiling = _ceiling({"vendor": "twilio"})
    assert ceiling.bind({"feature": "sms", "vendor": "twilio"}) == {"vendor": "twilio"}
    assert ceiling.bind({"feature": "sms", "vendor": "twilio2"}) is None
    assert ceiling.bind({"feature": "sms", "vendor": "*"}) is None  # a literal "*" value is not a wildcard


def test_bind_empty_match_applies_to_everything() -> None:
    assert _ceiling({}).bind({"feature": "x"}) == {}
    assert _ceiling({}).bind({}) == {}


def test_bind_exclude() -> None:
    ceiling = _ceiling({"customer": "*"}, exclude={"customer": {"acme", "globex"}})
    assert ceiling.bind({"customer": "acme"}) is None
    assert ceiling.bind({"customer": "globex", "feature": "f"}) is None
    assert ceiling.bind({"customer": "initech"}) == {"customer": "initech"}
    assert ceiling.bind({"feature": "f"}) is None


def test_ceiling_id_is_the_encoded_match() -> None:
    ceiling = _ceiling({"feature": "support", "customer": "*"})
    assert ceiling.id == "customer=*,feature=support"
    assert ceiling.match_dict == {"feature": "support", "customer": "*"}
    assert _ceiling({"b": "1", "a": "2"}).id == _ceiling({"a": "2", "b": "1"}).id

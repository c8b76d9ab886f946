"""The cached fallback across a trust boundary: what the store holds is data (never unpickled unless
signed with the app's secret), and one customer's cached answer is never served to another."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest

import costguard
from costguard import fallback
from costguard.fallback import JSONCodec, SignedPickleCodec
from helpers import make_guard, usd_ceiling


class Boom:
    """Unpickling this runs code: it writes a file (the proof of concept's `os.system`)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def guarded(guard: costguard.Guard, cache: fallback.Cached) -> Any:
    @guard.with_kill_switch("support", fallback=cache, estimate=0.01)
    def answer(question: str) -> str:
        return f"answer for {costguard.current_decision().labels.get('customer')}: {question}"  # type: ignore[union-attr]

    return answer


def test_a_pickle_planted_in_the_store_is_never_executed(tmp_path: Path) -> None:
    guard = make_guard(usd_ceiling({"feature": "support"}, day=0.01))
    cache = fallback.cached(ttl_s=60)
    answer = guarded(guard, cache)
    assert answer("what is my balance?").startswith("answer")
    guard.flush()
    key = cache.cache_key("support", {"feature": "support"}, ("what is my balance?",), {})
    marker = tmp_path / "pwned"
    # Whoever can write one key of the shared store replaces the cached value with a pickle.
    guard.store.cache_set(key, pickle.dumps(Boom(str(marker))), guard.clock() + 60)
    with pytest.raises(costguard.BudgetExceeded):  # not a cached value: the call is refused, nothing runs
        answer("what is my balance?")
    assert not marker.exists()


def test_json_is_the_default_and_what_it_cant_hold_is_not_cached() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=0.02))
    cache = fallback.cached(ttl_s=60, otherwise="no cache")
    assert isinstance(cache.codec, JSONCodec)

    @guard.with_kill_switch("f", fallback=cache, estimate=0.01)
    def compute(kind: str) -> Any:
        return {"a": [1, "é", None]} if kind == "json" else (1, 2)  # a tuple would come back a list

    assert compute("json") == {"a": [1, "é", None]}
    assert compute("tuple") == (1, 2)
    guard.flush()
    assert compute("json") == {"a": [1, "é", None]}  # the cap is reached: served from the cache
    assert compute("tuple") == "no cache"  # never cached as something it wasn't


def test_one_customers_answer_is_never_served_to_another() -> None:
    guard = make_guard(usd_ceiling({"feature": "support", "customer": "*"}, day=0.01))
    answer = guarded(guard, fallback.cached(ttl_s=60, otherwise="please try later"))
    with costguard.context(customer="alice"):
        assert answer("what is my balance?") == "answer for alice: what is my balance?"
    with costguard.context(customer="bob"):
        assert answer("what is my balance?") == "answer for bob: what is my balance?"
    guard.flush()
    with costguard.context(customer="bob"):
        assert answer("what is my balance?") == "answer for bob: what is my balance?"  # his own, cached
    with costguard.context(customer="carol"):
        assert answer("hello") == "answer for carol: hello"
        guard.flush()
        assert answer("what is my balance?") == "please try later"  # alice's answer is not hers


def test_shared_answers_are_served_across_customers_only_when_asked() -> None:
    guard = make_guard(usd_ceiling({"feature": "support", "customer": "*"}, day=0.01))
    answer = guarded(guard, fallback.cached(ttl_s=60, shared=True, otherwise="later"))
    with costguard.context(customer="alice"):
        first = answer("opening hours?")
    with costguard.context(customer="bob"):
        answer("anything")  # bob spends his cap
        guard.flush()
        assert answer("opening hours?") == first


def test_signed_pickle_is_opt_in_and_checks_the_signature_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        fallback.signed_pickle("short")
    codec = fallback.signed_pickle("s3cret-s3cret-s3cret")
    assert "s3cret" not in repr(codec)
    assert codec.loads(codec.dumps((1, {2}))) == (1, {2})  # types JSON can't hold
    marker = tmp_path / "pwned"
    planted = pickle.dumps(Boom(str(marker)))
    for forged in (planted, b"\x00" * 32 + planted, codec.dumps("x")[:32] + planted):
        with pytest.raises(ValueError, match="signature"):
            codec.loads(forged)
    other = SignedPickleCodec(os.urandom(32))
    with pytest.raises(ValueError):
        other.loads(codec.dumps("written with another secret"))
    assert not marker.exists()

    guard = make_guard(usd_ceiling({"feature": "f"}, day=0.01))

    @guard.with_kill_switch("f", fallback=fallback.cached(codec=codec), estimate=0.01)
    def compute() -> tuple[int, ...]:
        return (1, 2, 3)

    assert compute() == (1, 2, 3)
    guard.flush()
    assert compute() == (1, 2, 3)  # from the cache, a tuple again


def test_a_json_codec_builds_only_the_models_it_was_given() -> None:
    from pydantic import BaseModel

    class Answer(BaseModel):
        text: str

    class Other(BaseModel):
        text: str

    codec = JSONCodec([Answer])
    assert codec.loads(codec.dumps(Answer(text="hi"))) == Answer(text="hi")
    with pytest.raises(TypeError):
        codec.dumps(Other(text="hi"))  # not allowed: not cached
    planted = b'{"model":"os.system","value":"touch /tmp/x"}'
    with pytest.raises(ValueError, match="not a model this codec may build"):
        codec.loads(planted)
    with pytest.raises(ValueError):
        codec.loads(b"\x80\x04not json")

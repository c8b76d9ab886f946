"""What a call is expected to cost before it runs: the caller's estimate, the feature's, or a learned one.

Learned estimates (`estimator: learned`) keep a per-feature history of actual costs in this process
and share it through the store's cache, loaded in the background on first use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from costguard.errors import StoreError
from costguard.estimators import LearnedEstimator
from costguard.model import Money, Unit, check_count, micros_to_usd, to_micros
from costguard.reporting import Reporter
from costguard.settings import FeatureSettings
from costguard.stores.base import Store

__all__ = ["Estimates"]

log = logging.getLogger("costguard")

_LEARNED_KEEP_S = 30 * 86400


@dataclass(eq=False, repr=False)
class Estimates:
    """The amounts a call reserves, and the learned estimators behind `estimator: learned`."""

    store: Store
    reporter: Reporter
    clock: Callable[[], float]
    _learners: dict[str, LearnedEstimator] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def amounts(
        self, feature: str, settings: FeatureSettings, estimate_usd: Money | None, estimate_tokens: int | None
    ) -> dict[Unit, int]:
        """USD (micro-dollars), calls and tokens to reserve; `max_call_usd` is checked by the call path."""
        if estimate_usd is not None:
            usd = to_micros(estimate_usd, what="estimate_usd")
        else:
            learned = self._learner(feature, settings).estimate() if settings.estimator == "learned" else None
            usd = settings.estimate_usd if learned is None else learned
        tokens = (
            settings.estimate_tokens
            if estimate_tokens is None
            else check_count(estimate_tokens, what="estimate_tokens")
        )
        return {Unit.USD: usd, Unit.CALLS: 1, Unit.TOKENS: tokens}

    def learn(self, feature: str, settings: FeatureSettings, usd: int) -> None:
        """Add an actual cost to a learned feature's history (and share it when it changed enough)."""
        if settings.estimator != "learned":
            return
        learner = self._learner(feature, settings)
        if learner.record(usd):
            data = learner.dump()
            expires = self.clock() + _LEARNED_KEEP_S

            def save() -> None:
                try:
                    self.store.cache_set(f"learned:{feature}", data, expires)
                except StoreError:
                    log.debug("costguard: learned estimate for %s not saved, the store is unavailable", feature)

            self.reporter.later(save)

    def learned(self, feature: str) -> float | None:
        """The learned estimate of a feature in USD (None while it has too little history)."""
        learner = self._learners.get(feature)
        value = learner.estimate() if learner is not None else None
        return None if value is None else micros_to_usd(value)

    def _learner(self, feature: str, settings: FeatureSettings) -> LearnedEstimator:
        learner = self._learners.get(feature)
        if learner is None:
            with self._lock:
                learner = self._learners.get(feature)
                if learner is None:
                    learner = self._learners[feature] = LearnedEstimator(settings.learn)
                    new = learner
                    self.reporter.later(lambda: self._load(feature, new))
        return learner

    def _load(self, feature: str, learner: LearnedEstimator) -> None:
        try:
            learner.load(self.store.cache_get(f"learned:{feature}", self.clock()))
        except StoreError:
            learner.loaded = True  # start from this process's own history

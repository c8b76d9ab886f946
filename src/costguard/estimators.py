"""The learned estimator: a feature's recent actual costs, their p95 used as the next estimate.

Each guard keeps a window of the feature's recent actual costs (only calls whose real cost was
known: priced usage, `cost=`, `Priced`, charges). Until the window holds `min_samples` costs the
fixed `estimate_usd` is used; after that, the `percentile` (default p95) of the window. The window
is saved in the store's cache now and then, so a new process starts from the fleet's history
instead of from scratch.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["LearnSettings", "LearnedEstimator", "percentile"]


@dataclass(frozen=True)
class LearnSettings:
    """`percentile` of the last `window` actual costs, once there are `min_samples` of them."""

    percentile: float = 0.95
    window: int = 200
    min_samples: int = 20
    save_every: int = 25

    def __post_init__(self) -> None:
        if not 0 < self.percentile <= 1:
            raise ValueError(f"percentile must be in (0, 1], got {self.percentile!r}")
        if self.window < 1 or self.min_samples < 1 or self.min_samples > self.window:
            raise ValueError(
                f"need 1 <= min_samples <= window, got min_samples={self.min_samples}, window={self.window}"
            )


def percentile(values: list[int], q: float) -> int:
    """The nearest-rank percentile: the smallest value with at least `q` of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class LearnedEstimator:
    """One feature's window of actual costs (micro-dollars)."""

    def __init__(self, settings: LearnSettings) -> None:
        self.settings = settings
        self._costs: deque[int] = deque(maxlen=settings.window)
        self._lock = threading.Lock()
        self._since_save = 0
        self.loaded = False

    def estimate(self) -> int | None:
        """The learned estimate, or None while there is too little history."""
        with self._lock:
            if len(self._costs) < self.settings.min_samples:
                return None
            return percentile(list(self._costs), self.settings.percentile)

    def record(self, micros: int) -> bool:
        """Add a call's actual cost; returns True when it is time to save the window."""
        with self._lock:
            self._costs.append(micros)
            self._since_save += 1
            if self._since_save >= self.settings.save_every:
                self._since_save = 0
                return True
            return False

    def dump(self) -> bytes:
        with self._lock:
            return json.dumps(list(self._costs)).encode()

    def load(self, data: bytes | None) -> None:
        """Merge a saved window under what this process has already seen (its own costs are newer)."""
        self.loaded = True
        if not data:
            return
        try:
            saved = [int(v) for v in json.loads(data) if isinstance(v, int) and v >= 0]
        except (ValueError, TypeError):
            return
        with self._lock:
            mine = list(self._costs)
            self._costs.clear()
            self._costs.extend(saved[-self.settings.window :])
            self._costs.extend(mine)

    def __len__(self) -> int:
        return len(self._costs)

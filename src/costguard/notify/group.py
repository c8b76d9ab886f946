"""Alert aggregation for per-instance ceilings: one alert per ceiling, not one per customer.

A ceiling with a wildcard label (`customer: '*'`) has an instance per customer; 200 ids hitting
their cap are 200 `kill` crossings. Here they become one alert stream per ceiling, kind, threshold
and period bucket: the first crossing goes out at once (as an alert about the ceiling, naming its
instance), the rest of the window are held and go out as one summary when the window ends (how
many, and the instances with the most spend). A window that saw nothing more closes; a storm gets
one summary per window.

This runs in each process, between the guard and the notifiers' lanes; crossings themselves are
claimed once across processes by the store.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from costguard.events import Event

__all__ = ["GROUPED_KINDS", "TOP_INSTANCES", "Grouper", "wildcard_names"]

GROUPED_KINDS = frozenset({"warn", "kill", "kill_cleared"})
TOP_INSTANCES = 5  # instances named in a summary, most spend first


def wildcard_names(ceiling_id: str | None) -> frozenset[str]:
    """The wildcard labels of a ceiling, read from its id (`customer=*,feature=chat`): values are
    encoded there, so a literal '*' value never reads as `=*`."""
    if not ceiling_id:
        return frozenset()
    return frozenset(part[:-2] for part in ceiling_id.split(",") if part.endswith("=*"))


_Key = tuple[Any, ...]


@dataclass
class _Window:
    ends: float
    template: Event
    count: int = 0
    top: list[tuple[float, int, Mapping[str, str]]] = field(default_factory=list)  # a min-heap
    last: Event | None = None


class Grouper:
    """Aggregates per-instance alerts; `emit` receives what should be delivered, from the caller's
    thread (the first of a window) or the grouper's own (summaries)."""

    def __init__(self, emit: Callable[[Event], None], window_s: float) -> None:
        if not window_s > 0:
            raise ValueError(f"the alert group window must be more than 0 seconds, got {window_s!r}")
        self._emit = emit
        self.window_s = window_s
        self._windows: dict[_Key, _Window] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._seq = itertools.count()
        self.grouped = 0  # instance alerts folded into summaries

    def add(self, event: Event) -> bool:
        """Take `event` when it belongs to a per-instance ceiling (True); False: deliver it as it is."""
        wild = wildcard_names(event.ceiling)
        if event.kind not in GROUPED_KINDS or not wild or event.instances is not None:
            return False
        scope = {name: "*" if name in wild else value for name, value in event.labels.items()}
        key = (event.ceiling, event.kind, event.threshold, event.period, event.unit, event.bucket, event.reason)
        spent = float(event.spent) if event.spent is not None else 0.0
        first: Event | None = None
        with self._cond:
            if self._closed:
                first = event  # closing: nothing would summarize it later
            else:
                window = self._windows.get(key)
                if window is None:
                    self._windows[key] = _Window(time.monotonic() + self.window_s, replace(event, labels=scope))
                    self._ensure_thread()
                    self._cond.notify()
                    first = event
                else:
                    window.count += 1
                    window.last = event
                    item = (spent, next(self._seq), dict(event.labels))
                    if len(window.top) < TOP_INSTANCES:
                        heapq.heappush(window.top, item)
                    else:
                        heapq.heappushpop(window.top, item)
                    self.grouped += 1
        if first is not None:
            self._emit(
                replace(first, labels=scope, instances=1, top=({"labels": dict(first.labels), "spent": first.spent},))
            )
        return True

    def flush(self) -> None:
        """Deliver every held summary now (the windows stay open)."""
        self._roll(force=True)

    def close(self) -> None:
        """Deliver held summaries and stop; later alerts pass through one by one."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._roll(force=True)

    # ------------------------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="costguard-alert-groups", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                ends = [w.ends for w in self._windows.values()]
                if not ends:
                    self._cond.wait()
                    continue
                if min(ends) > now:
                    self._cond.wait(min(ends) - now)
                    continue
            self._roll(force=False)

    def _roll(self, *, force: bool) -> None:
        """Summaries of the windows that ended (all with `force`); windows without news close."""
        out: list[Event] = []
        now = time.monotonic()
        with self._cond:
            for key, window in list(self._windows.items()):
                if not force and window.ends > now:
                    continue
                if window.count == 0:
                    if not force:
                        del self._windows[key]
                    continue
                out.append(_summary(window))
                window.count, window.top, window.last = 0, [], None
                window.ends = now + self.window_s
        for event in out:
            self._emit(event)


def _summary(window: _Window) -> Event:
    top = sorted(window.top, key=lambda item: (-item[0], item[1]))
    last = window.last or window.template
    single = window.count == 1
    return replace(
        window.template,
        at=last.at,
        spent=last.spent if single else None,
        resets_at=last.resets_at,
        instances=window.count,
        top=tuple({"labels": labels, "spent": spent} for spent, _, labels in top),
        id=uuid.uuid4().hex,
    )

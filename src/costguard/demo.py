"""`costguard demo`: a simulated app whose three LLM features run into their ceilings, shown live."""

from __future__ import annotations

import random
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

import costguard
from costguard.testing import RecordingNotifier

if TYPE_CHECKING:
    from costguard.decision import Decision
    from costguard.events import Event
    from costguard.status import CeilingStatus, Status

__all__ = ["run"]

# USD per million tokens (input, output). The demo prices its own calls and returns `costguard.Priced`.
PRICES: dict[str, tuple[float, float]] = {"gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60)}
WORKERS = 6
# A fixed number of calls, paced to fill `--seconds`, so every run tells the same story at any speed.
CALLS_PER_WORKER = 60
CUSTOMERS = ("globex", "acme", "initech", "umbrella")
CUSTOMER_WEIGHTS = (0.6, 0.4 / 3, 0.4 / 3, 0.4 / 3)  # globex is the heavy customer
KILL_SWITCH_WINDOW = (0.70, 0.85)  # share of calls done when the operator flips doc_search off, then on

CONFIG = """\
# Written by `costguard demo`: the same format as your own costguard.yaml.
store: sqlite:///{db}
timezone: UTC
thresholds: [0.8, 1.0]          # warn at 80 %, shut off at 100 %
features:
  support_agent:                # crosses 80 % (warn), then 100 % (shut off, fallback served)
    monthly_usd: 12
    daily_usd: 0.40
    estimate_usd: 0.01          # reserved before each call, settled to the real cost after it
  doc_search:                   # from 90 % on, the decorator's degrade= (a cheaper model) runs instead
    monthly_usd: 20
    daily_usd: 0.80
    estimate_usd: 0.012
    degrade_at: 0.9
  summarizer:                   # healthy overall, but every customer has its own daily ceiling
    monthly_usd: 15
    daily_usd: 0.50
    estimate_usd: 0.0025
    per_customer: {{daily_usd: 0.05}}
"""


@dataclass(frozen=True)
class _Spec:
    model: str
    prompt: tuple[int, int]
    completion: tuple[int, int]
    weight: float = 0.0


SPECS = {
    "support_agent": _Spec("gpt-4o", (900, 2100), (150, 450), 0.35),
    "doc_search": _Spec("gpt-4o", (3200, 3800), (150, 250), 0.35),
    "summarizer": _Spec("gpt-4o-mini", (8000, 12000), (300, 500), 0.3),
}
CHEAP_SEARCH = _Spec("gpt-4o-mini", (1000, 1500), (100, 300))
PROMPTS = {
    "support_agent": ("Where is my order?", "How do I reset my password?", "Can I change my plan?"),
    "doc_search": ("rate limits", "SSO setup", "export to CSV", "webhook retries", "billing cycle"),
    "summarizer": ("Q3 board memo. Revenue grew 12 %. Churn fell.", "Incident report. The API was down 14 min."),
}


def price(response: dict[str, Any]) -> float:
    """USD for an OpenAI-shaped response, from its `model` and `usage`."""
    rate_in, rate_out = PRICES[response["model"]]
    usage = response["usage"]
    return float(usage["prompt_tokens"] * rate_in + usage["completion_tokens"] * rate_out) / 1_000_000


def fake_llm(model: str, prompt: str, prompt_tokens: int, completion_tokens: int, latency_s: float) -> dict[str, Any]:
    """A chat completion as the OpenAI API shapes it, after a simulated network wait."""
    time.sleep(latency_s)
    return {
        "id": f"chatcmpl-demo-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"({model}) re: {prompt}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@dataclass
class _Tally:
    calls: int = 0
    allowed: int = 0
    degraded: int = 0
    fallbacks: int = 0


def _who(labels: Mapping[str, str]) -> str:
    found = dict(labels)
    name = found.pop("feature", "everything")
    return " ".join([name, *(f"{k}={v}" for k, v in sorted(found.items()))])


class _Stats:
    """Counts and the event log, shared by the workers, the notifier thread and the display."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.tally = {name: _Tally() for name in SPECS}
        self.lines: list[Text] = []
        self.blocked: set[tuple[tuple[str, str], ...]] = set()
        self.done = 0
        self._once: set[tuple[str, ...]] = set()

    def log(self, tag: str, style: str, text: str, once: tuple[str, ...] | None = None) -> None:
        """Append an event line (`once`: only the first time this key is seen)."""
        with self.lock:
            if once is not None:
                if once in self._once:
                    return
                self._once.add(once)
            stamp = f"{time.monotonic() - self.start:6.1f}s "
            self.lines.append(Text.assemble((stamp, "dim"), (f"{tag:<16}", style), text))

    def __call__(self, event: Event) -> None:
        """The notifier: alert events become log lines."""
        who = _who(event.labels)
        spent, limit = event.spent or 0.0, event.limit or 0.0
        if event.kind == "warn":
            self.log("WARN 80 %", "bold yellow", f"{who}: ${spent:.4f} of ${limit:.2f} ({event.period})")
        elif event.kind == "kill":
            self.log("KILL 100 %", "bold red", f"{who}: {event.period} ceiling full, shut off")
        elif event.kind == "killswitch_activated":
            self.log("KILL SWITCH ON", "bold white on red", f"{who} ({event.reason}, by {event.actor})")
        elif event.kind == "killswitch_deactivated":
            self.log("KILL SWITCH OFF", "bold green", f"{who} (by {event.actor})")

    def fallback(self, feature: str, decision: Decision | None, served: str) -> None:
        """Count a fallback; log the first one per reason and scope."""
        reason = decision.reason if decision else "blocked"
        scope = dict(decision.scope) if decision and decision.scope else {"feature": feature}
        key = tuple(sorted(scope.items()))
        with self.lock:
            self.tally[feature].fallbacks += 1
            if reason == "budget_exceeded":
                self.blocked.add(key)
        why = "kill switch" if reason == "kill_switch" else f"{decision.period if decision else ''} ceiling full"
        once = (reason, *(f"{k}={v}" for k, v in key))
        self.log("FALLBACK", "red", f"{_who(scope)} ({why}): {served}", once=once)


class _App:
    """The simulated application: three features calling a fake LLM through the guard."""

    def __init__(self, guard: costguard.Guard, stats: _Stats, latency_scale: float) -> None:
        self.stats = stats
        self.latency_scale = latency_scale
        self.local = threading.local()
        self.features = {
            "support_agent": guard.with_kill_switch("support_agent", fallback=self.canned_reply)(self.support_agent),
            "doc_search": guard.with_kill_switch(
                "doc_search", fallback=self.keyword_search, degrade=self.doc_search_cheap
            )(self.doc_search),
            "summarizer": guard.with_kill_switch("summarizer", fallback=self.extractive_summary)(self.summarize),
        }

    def call(self, feature: str, spec: _Spec, prompt: str, *, degraded: bool = False) -> costguard.Priced[Any]:
        """One fake completion, counted and priced."""
        rng: random.Random = self.local.rng
        response = fake_llm(
            spec.model,
            prompt,
            rng.randint(*spec.prompt),
            rng.randint(*spec.completion),
            rng.uniform(0.005, 0.1) * self.latency_scale,
        )
        with self.stats.lock:
            self.stats.tally[feature].allowed += 1
            self.stats.tally[feature].degraded += degraded
        return costguard.Priced(response, price(response))

    def support_agent(self, question: str) -> costguard.Priced[Any]:
        return self.call("support_agent", SPECS["support_agent"], question)

    def doc_search(self, query: str) -> costguard.Priced[Any]:
        return self.call("doc_search", SPECS["doc_search"], query)

    def doc_search_cheap(self, query: str) -> costguard.Priced[Any]:
        decision = costguard.current_decision()
        ratio = decision.ratio if decision else 0.0
        self.stats.log("DEGRADE", "magenta", f"doc_search at {ratio:.0%}: gpt-4o -> gpt-4o-mini", once=("degrade",))
        return self.call("doc_search", CHEAP_SEARCH, query, degraded=True)

    def summarize(self, document: str) -> costguard.Priced[Any]:
        return self.call("summarizer", SPECS["summarizer"], document)

    def canned_reply(self, question: str) -> str:
        self.stats.fallback("support_agent", costguard.current_decision(), "canned reply")
        return "Support chat is busy, we'll email you."

    def keyword_search(self, query: str) -> list[str]:
        self.stats.fallback("doc_search", costguard.current_decision(), "keyword search")
        return [f"docs/{query.replace(' ', '-')}.md"]

    def extractive_summary(self, document: str) -> str:
        self.stats.fallback("summarizer", costguard.current_decision(), "extractive summary")
        return document.partition(".")[0]


def _worker(index: int, app: _App, seed: int, seconds: float, stop: threading.Event, errors: list[Exception]) -> None:
    rng = random.Random(f"{seed}:{index}")
    app.local.rng = rng
    names = list(SPECS)
    weights = [SPECS[n].weight for n in names]
    slot = seconds / CALLS_PER_WORKER
    start = app.stats.start
    try:
        for i in range(CALLS_PER_WORKER):
            wait = start + (i + rng.random()) * slot - time.monotonic()
            if stop.wait(max(0.0, wait)):
                return
            feature = rng.choices(names, weights)[0]
            with costguard.context(customer=rng.choices(CUSTOMERS, CUSTOMER_WEIGHTS)[0]):
                app.features[feature](rng.choice(PROMPTS[feature]))
            with app.stats.lock:
                app.stats.tally[feature].calls += 1
                app.stats.done += 1
    except Exception as exc:  # noqa: BLE001 - reported by the main thread, which sets the exit code
        errors.append(exc)


def _day_rows(status: Status) -> dict[str, CeilingStatus]:
    """Today's USD rows: keyed by feature, or `feature/customer` for per-customer ceilings."""
    rows = {}
    for row in status.ceilings:
        if row.period == "day" and row.unit == "usd":
            labels = dict(row.labels)
            key = labels["feature"] + (f"/{labels['customer']}" if "customer" in labels else "")
            rows[key] = row
    return rows


def _state(key: str, row: CeilingStatus, stats: _Stats, switched_off: set[str]) -> Text:
    feature, _, customer = key.partition("/")
    scope = tuple(sorted({"feature": feature, **({"customer": customer} if customer else {})}.items()))
    if not customer and feature in switched_off:
        return Text("KILL SWITCH", "bold white on red")
    if scope in stats.blocked:
        return Text("CUT OFF" if customer else "SHUT OFF", "bold red")
    if not customer and stats.tally[feature].degraded:
        return Text("DEGRADED", "magenta")
    if row.ratio >= 0.8:
        return Text("WARN", "yellow")
    return Text("healthy", "green")


def _dashboard(guard: costguard.Guard, stats: _Stats, seconds: float, total: int) -> RenderableType:
    status = guard.status()
    rows = _day_rows(status)
    switched_off = {dict(s.scope).get("feature", "*") for s in status.killswitches}
    # No borders and one space between columns: the whole screen fits an 80-column terminal.
    table = Table(box=None, padding=(0, 1), collapse_padding=True, pad_edge=False, header_style="bold")
    table.add_column("ceiling", no_wrap=True)
    table.add_column("today", width=12)
    for column in ("spent/limit", "allowed", "degraded", "fallback"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    order = list(SPECS)
    for key in sorted(rows, key=lambda k: (order.index(k.split("/")[0]), "/" in k, k)):
        row = rows[key]
        color = "red" if row.ratio >= 1 else "yellow" if row.ratio >= 0.8 else "green"
        bar = ProgressBar(total=row.limit, completed=min(row.spent, row.limit), width=12, complete_style=color)
        tally = stats.tally.get(key) if "/" not in key else None
        counts = [str(v) for v in (tally.allowed, tally.degraded, tally.fallbacks)] if tally else [""] * 3
        name = key if tally else f"  {key.split('/')[1]}"
        spend = f"${row.spent:.3f}/${row.limit:.2f}"
        table.add_row(name, bar, spend, *counts, _state(key, row, stats, switched_off))
    elapsed = time.monotonic() - stats.start
    header = Text(f"costguard demo: {stats.done}/{total} calls from {WORKERS} workers, {elapsed:.1f}s of ~{seconds:g}s")
    lines = [line.copy() for line in stats.lines[-10:]]
    for line in lines:
        line.no_wrap, line.overflow = True, "ellipsis"
    events = Group(*lines) if lines else Text("(no events yet)", "dim")
    return Group(header, Text(), table, Panel(events, title="latest events", border_style="dim"))


def _progress_line(guard: costguard.Guard, stats: _Stats, total: int) -> str:
    rows = _day_rows(guard.status())
    parts = [f"{name} ${rows[name].spent:.4f}/${rows[name].limit:.2f}" for name in SPECS if name in rows]
    return f"{time.monotonic() - stats.start:6.1f}s progress {stats.done}/{total} calls: " + ", ".join(parts)


def _summary(guard: costguard.Guard, stats: _Stats, recorder: RecordingNotifier) -> RenderableType:
    rows = _day_rows(guard.status())
    table = Table(title="Summary")
    table.add_column("feature", no_wrap=True)
    for column in ("calls", "allowed", "fallbacks", "degraded", "spent today", "daily limit"):
        table.add_column(column, justify="right")
    for name, tally in stats.tally.items():
        row = rows.get(name)
        spent, limit = (f"${row.spent:.4f}", f"${row.limit:.2f}") if row else ("-", "-")
        table.add_row(
            name, *(str(v) for v in (tally.calls, tally.allowed, tally.fallbacks, tally.degraded)), spent, limit
        )
    records = guard.audit(limit=1_000_000)
    by_decision = Counter(r.decision for r in records)
    kinds = Counter(recorder.kinds())
    audit = ", ".join(f"{n} {d}" for d, n in sorted(by_decision.items()))
    alerts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
    return Group(
        table,
        Text(f"audit log (guard.audit): {len(records)} records ({audit})", overflow="fold"),
        Text(f"alerts delivered to notifiers: {alerts}", overflow="fold"),
    )


def run(seconds: float = 20.0, seed: int = 1, console: Console | None = None) -> int:
    """Run the demo for about `seconds`; returns the exit code."""
    console = console or Console(highlight=False)
    with tempfile.TemporaryDirectory(prefix="costguard-demo-") as tmp:
        config_file = Path(tmp) / "costguard.yaml"
        config_text = CONFIG.format(db=(Path(tmp) / "demo.db").as_posix())
        config_file.write_text(config_text, encoding="utf-8")
        console.print(Text("The demo's costguard.yaml:", "bold"))
        console.print(Syntax(config_text, "yaml") if console.is_terminal else Text(config_text), soft_wrap=True)
        stats, recorder = _Stats(), RecordingNotifier()
        guard = costguard.Guard.from_yaml(config_file, notifiers=[stats, recorder])
        try:
            return _simulate(guard, stats, recorder, seconds, seed, console)
        finally:
            guard.close()


def _operate(guard: costguard.Guard, state: str, progress: float) -> str:
    """The operator's incident drill: doc_search switched off for a stretch near the end, then on again."""
    scope = {"feature": "doc_search"}
    if state == "off" and progress >= KILL_SWITCH_WINDOW[0]:
        guard.killswitch.activate(reason="incident drill", actor="ops", scope=scope)
        return "on"
    if state == "on" and progress >= KILL_SWITCH_WINDOW[1]:
        guard.killswitch.deactivate(actor="ops", scope=scope)
        return "done"
    return state


def _simulate(
    guard: costguard.Guard, stats: _Stats, recorder: RecordingNotifier, seconds: float, seed: int, console: Console
) -> int:
    total = WORKERS * CALLS_PER_WORKER
    app = _App(guard, stats, latency_scale=min(1.0, seconds / 20))
    stop, errors = threading.Event(), list[Exception]()
    stats.start = time.monotonic()
    workers = [
        threading.Thread(target=_worker, args=(i, app, seed, seconds, stop, errors), name=f"demo-worker-{i}")
        for i in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    switch, interrupted = "off", False
    printed, next_report, next_frame = 0, 0.25, 0.0
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    try:
        if live is not None:
            live.start()
        while any(w.is_alive() for w in workers):
            switch = _operate(guard, switch, stats.done / total)
            if live is not None and time.monotonic() >= next_frame:
                live.update(_dashboard(guard, stats, seconds, total), refresh=True)
                next_frame = time.monotonic() + 0.25  # ~4 frames a second
            elif live is None:
                for line in stats.lines[printed:]:
                    console.print(line, soft_wrap=True)
                printed = len(stats.lines)
                if next_report < 1 and stats.done / total >= next_report:
                    console.print(_progress_line(guard, stats, total), soft_wrap=True)
                    next_report += 0.25
            time.sleep(0.02)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        if switch == "on":
            _operate(guard, switch, 1.0)
        guard.flush()
        if live is not None:
            live.update(_dashboard(guard, stats, seconds, total), refresh=True)
            live.stop()
    if live is None:
        for line in stats.lines[printed:]:
            console.print(line, soft_wrap=True)
        console.print(_progress_line(guard, stats, total), soft_wrap=True)
    console.print(_summary(guard, stats, recorder))
    if errors:
        console.print(Text(f"a worker failed: {errors[0]!r}", "bold red"))
        return 1
    return 130 if interrupted else 0

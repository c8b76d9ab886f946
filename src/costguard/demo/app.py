"""The demo's simulated application: three LLM features calling a fake, priced LLM through the guard from
a few worker threads, and the shared counts and event log that the display reads."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.text import Text

import costguard

if TYPE_CHECKING:
    from costguard.decision import Decision
    from costguard.events import Event

__all__ = [
    "CALLS_PER_WORKER",
    "CHEAP_SEARCH",
    "CUSTOMERS",
    "CUSTOMER_WEIGHTS",
    "PRICES",
    "PROMPTS",
    "SPECS",
    "WORKERS",
    "App",
    "Spec",
    "Stats",
    "Tally",
    "fake_llm",
    "price",
    "run_worker",
]

# USD per million tokens (input, output). The demo prices its own calls and returns `costguard.Priced`.
PRICES: dict[str, tuple[float, float]] = {"gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60)}
WORKERS = 6
# A fixed number of calls, paced to fill `--seconds`, so every run tells the same story at any speed.
CALLS_PER_WORKER = 60
CUSTOMERS = ("globex", "acme", "initech", "umbrella")
CUSTOMER_WEIGHTS = (0.6, 0.4 / 3, 0.4 / 3, 0.4 / 3)  # globex is the heavy customer


@dataclass(frozen=True)
class Spec:
    """A feature's calls: the model, token ranges (prompt, completion) and its share of the traffic."""

    model: str
    prompt: tuple[int, int]
    completion: tuple[int, int]
    weight: float = 0.0


SPECS = {
    "support_agent": Spec("gpt-4o", (900, 2100), (150, 450), 0.35),
    "doc_search": Spec("gpt-4o", (3200, 3800), (150, 250), 0.35),
    "summarizer": Spec("gpt-4o-mini", (8000, 12000), (300, 500), 0.3),
}
CHEAP_SEARCH = Spec("gpt-4o-mini", (1000, 1500), (100, 300))
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
class Tally:
    """One feature's counts: calls made, calls the guard allowed, degraded ones and fallbacks."""

    calls: int = 0
    allowed: int = 0
    degraded: int = 0
    fallbacks: int = 0


def _who(labels: Mapping[str, str]) -> str:
    found = dict(labels)
    name = found.pop("feature", "everything")
    return " ".join([name, *(f"{k}={v}" for k, v in sorted(found.items()))])


class Stats:
    """Counts and the event log, shared by the workers, the notifier thread and the display."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.tally = {name: Tally() for name in SPECS}
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


class App:
    """The simulated application: three features calling a fake LLM through the guard."""

    def __init__(self, guard: costguard.Guard, stats: Stats, latency_scale: float) -> None:
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

    def call(self, feature: str, spec: Spec, prompt: str, *, degraded: bool = False) -> costguard.Priced[Any]:
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


def run_worker(index: int, app: App, seed: int, seconds: float, stop: threading.Event, errors: list[Exception]) -> None:
    """Worker `index`: its share of the calls, paced over `seconds`, with a random feature and customer each."""
    rng = random.Random(f"{seed}:{index}")  # noqa: S311 - simulated traffic: fake latency and token counts
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

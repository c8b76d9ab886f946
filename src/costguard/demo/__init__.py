"""`costguard demo`: a simulated app whose three LLM features run into their ceilings, shown live.

This module writes the demo's config, runs the workers and plays the operator; the simulated app is in
`costguard.demo.app`, what is shown in `costguard.demo.display`.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.syntax import Syntax
from rich.text import Text

import costguard
from costguard.demo.app import CALLS_PER_WORKER, WORKERS, App, Stats, run_worker
from costguard.demo.display import dashboard, progress_line, summary
from costguard.testing import RecordingNotifier

__all__ = ["run"]

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


def run(seconds: float = 20.0, seed: int = 1, console: Console | None = None) -> int:
    """Run the demo for about `seconds`; returns the exit code."""
    console = console or Console(highlight=False)
    with tempfile.TemporaryDirectory(prefix="costguard-demo-") as tmp:
        config_file = Path(tmp) / "costguard.yaml"
        config_text = CONFIG.format(db=(Path(tmp) / "demo.db").as_posix())
        config_file.write_text(config_text, encoding="utf-8")
        console.print(Text("The demo's costguard.yaml:", "bold"))
        console.print(Syntax(config_text, "yaml") if console.is_terminal else Text(config_text), soft_wrap=True)
        stats, recorder = Stats(), RecordingNotifier()
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
    guard: costguard.Guard, stats: Stats, recorder: RecordingNotifier, seconds: float, seed: int, console: Console
) -> int:
    total = WORKERS * CALLS_PER_WORKER
    app = App(guard, stats, latency_scale=min(1.0, seconds / 20))
    stop, errors = threading.Event(), list[Exception]()
    stats.start = time.monotonic()
    workers = [
        threading.Thread(target=run_worker, args=(i, app, seed, seconds, stop, errors), name=f"demo-worker-{i}")
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
                live.update(dashboard(guard, stats, seconds, total), refresh=True)
                next_frame = time.monotonic() + 0.25  # ~4 frames a second
            elif live is None:
                for line in stats.lines[printed:]:
                    console.print(line, soft_wrap=True)
                printed = len(stats.lines)
                if next_report < 1 and stats.done / total >= next_report:
                    console.print(progress_line(guard, stats, total), soft_wrap=True)
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
            live.update(dashboard(guard, stats, seconds, total), refresh=True)
            live.stop()
    if live is None:
        for line in stats.lines[printed:]:
            console.print(line, soft_wrap=True)
        console.print(progress_line(guard, stats, total), soft_wrap=True)
    console.print(summary(guard, stats, recorder))
    if errors:
        console.print(Text(f"a worker failed: {errors[0]!r}", "bold red"))
        return 1
    return 130 if interrupted else 0

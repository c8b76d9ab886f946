"""Human-readable alert text shared by the notifiers: a headline, the numbers, and what happens next."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from costguard.events import Event

__all__ = ["details", "headline", "money", "next_step", "progress_bar", "scope_text"]

_EMOJI = {
    "warn": ":warning:",
    "kill": ":octagonal_sign:",
    "kill_cleared": ":white_check_mark:",
    "killswitch_activated": ":octagonal_sign:",
    "killswitch_deactivated": ":white_check_mark:",
    "limit_changed": ":pencil2:",
    "store_error": ":exclamation:",
}


def emoji(event: Event) -> str:
    """Slack shortcode for the event kind."""
    return _EMOJI.get(event.kind, ":bell:")


def scope_text(labels: Mapping[str, str]) -> str:
    """`support_agent · customer=acme`: the feature first, then the other labels; `everything` when empty."""
    parts = [labels["feature"]] if "feature" in labels else []
    parts += [f"{name}={value}" for name, value in sorted(labels.items()) if name != "feature"]
    return " · ".join(parts) or "everything"


def money(value: float | None, unit: str | None) -> str:
    """A counter value in its unit: `$412.50`, `1,204 calls`, `88,000 tokens`."""
    if value is None:
        return "-"
    if unit == "usd":
        return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:,.6f}".rstrip("0")
    return f"{value:,.0f} {unit or ''}".rstrip()


def progress_bar(ratio: float, width: int = 20) -> str:
    """`████████████████░░░░ 80 %` (capped at the bar's width, the percentage is not)."""
    filled = max(0, min(width, round(ratio * width)))
    return "█" * filled + "░" * (width - filled) + f" {ratio * 100:.0f} %"


def ratio_of(event: Event) -> float | None:
    """Spend over limit, when both are known."""
    if event.spent is None or event.limit is None:
        return None
    if event.limit <= 0:
        return 1.0 if event.spent <= 0 else float("inf")
    return event.spent / event.limit


def _limit_name(event: Event) -> str:
    unit = {"usd": "USD", "calls": "calls", "tokens": "tokens"}.get(event.unit or "", event.unit or "")
    return f"{event.period or ''} {unit} limit".strip()


def _instance(event: Event) -> Event:
    """An alert about one instance of a per-instance ceiling, told as that instance's own."""
    if event.instances == 1 and event.top:
        return replace(event, labels=event.top[0]["labels"], instances=None, top=())
    return event


def _grouped_headline(event: Event) -> str:
    scope = scope_text(event.labels)
    more = f"{event.instances} more"
    if event.kind == "warn":
        return f"{scope}: {more} reached {(event.threshold or 0) * 100:g} % of their {_limit_name(event)}"
    if event.kind == "kill":
        return f"{scope}: {more} hit their {_limit_name(event)}: their calls are blocked"
    return f"{scope}: {more} are open again: {event.reason or 'the limit no longer blocks'}"


def headline(event: Event) -> str:
    """One line that says what happened, with the scope first; a summary of a per-instance ceiling's
    alerts says how many more instances it stands for."""
    event = _instance(event)
    if event.instances is not None:
        return _grouped_headline(event)
    scope = scope_text(event.labels)
    if event.kind == "warn":
        pct = f"{(event.threshold or 0) * 100:g} %"
        return f"{scope} reached {pct} of its {_limit_name(event)}"
    if event.kind == "kill":
        return f"{scope} hit its {_limit_name(event)}: calls are blocked"
    if event.kind == "kill_cleared":
        return f"{scope} is open again: {event.reason or 'the limit no longer blocks'}"
    if event.kind == "killswitch_activated":
        return f"Kill switch ON for {scope}"
    if event.kind == "killswitch_deactivated":
        return f"Kill switch OFF for {scope}"
    if event.kind == "limit_changed":
        return f"{scope}: {_limit_name(event)} set to {money(event.limit, event.unit)}"
    return f"costguard cannot reach its store: {event.reason or 'unknown error'}"


def details(event: Event) -> list[str]:
    """The numbers: spend against limit with a bar, who and why, when it resets; for a summary, the
    instances with the most spend."""
    event = _instance(event)
    lines: list[str] = []
    if event.instances is not None:
        shown = ", ".join(
            f"{scope_text({k: v for k, v in item['labels'].items() if event.labels.get(k) == '*'})} "
            f"{money(item['spent'], event.unit)}"
            for item in event.top
        )
        rest = event.instances - len(event.top)
        lines.append(f"most spend: {shown}" + (f" and {rest} more" if rest > 0 else ""))
        lines.append(f"limit {money(event.limit, event.unit)} each")
        if event.resets_at is not None and event.kind in ("warn", "kill"):
            lines.append(f"resets {event.resets_at:%Y-%m-%d %H:%M} UTC")
        return lines
    ratio = ratio_of(event)
    if ratio is not None and event.kind in ("warn", "kill", "kill_cleared"):
        lines.append(f"{progress_bar(ratio)}  {money(event.spent, event.unit)} of {money(event.limit, event.unit)}")
    if event.kind in ("killswitch_activated", "killswitch_deactivated", "limit_changed"):
        who = event.actor or "unknown"
        lines.append(f"by {who}" + (f": {event.reason}" if event.reason else ""))
    if event.resets_at is not None and event.kind in ("warn", "kill"):
        lines.append(f"resets {event.resets_at:%Y-%m-%d %H:%M} UTC")
    return lines


def next_step(event: Event) -> str:
    """What happens now, and what an operator can do about it."""
    event = _instance(event)
    scope = scope_text(event.labels)
    if event.kind == "warn":
        if event.enforcement == "soft":
            return "Soft ceiling: calls continue past 100 % and are marked degraded."
        return f"At 100 % calls for {scope} get their fallback until the period resets or the limit is raised."
    if event.kind == "kill":
        return (
            "Callers now get the fallback (or BudgetExceeded). To resume before the reset: "
            "`costguard limits set` with a reason."
        )
    if event.kind == "kill_cleared":
        return "Guarded calls are allowed again."
    if event.kind == "killswitch_activated":
        return "Every guarded call in this scope gets its fallback until `costguard killswitch deactivate`."
    if event.kind == "killswitch_deactivated":
        return "Guarded calls run again; ceilings still apply."
    if event.kind == "limit_changed":
        return "Every process picks the new limit up within its settings cache."
    return "Calls follow on_store_error (open: allowed and buffered, closed: fallback) until the store is back."


def plain_text(event: Event) -> str:
    """Headline, numbers and next step as plain lines (PagerDuty summaries, logs, Slack's fallback text)."""
    return "\n".join([headline(event), *details(event), next_step(event)])

"""`costguard.client.Client`: a small typed client of the admin HTTP API (`costguard serve`).

Needs httpx: `pip install "costguard-ai[client]"`.

    from costguard.client import Client

    with Client("http://127.0.0.1:8787", token) as api:
        if api.budget.status().daily.remaining_usd == 0:
            api.killswitch.activate("daily budget spent")

Every error answer (and no answer at all) is raised as `ApiError`, which never holds the token.
"""

from __future__ import annotations

from costguard.client._http import ApiError, BudgetApi, Client, KillSwitchApi
from costguard.client._results import (
    BudgetStatus,
    CeilingRow,
    Forecast,
    ForecastRow,
    KillSwitchChange,
    KillSwitchStatus,
    LimitChange,
    LimitsUpdated,
    PeriodBudget,
    Switch,
)

__all__ = [
    "ApiError",
    "BudgetApi",
    "BudgetStatus",
    "CeilingRow",
    "Client",
    "Forecast",
    "ForecastRow",
    "KillSwitchApi",
    "KillSwitchChange",
    "KillSwitchStatus",
    "LimitChange",
    "LimitsUpdated",
    "PeriodBudget",
    "Switch",
]

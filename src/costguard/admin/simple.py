"""The simple shapes the admin API answers beside its full ones, for clients written against simpler budget APIs.

Those clients see one caller's scope — everything, or a tenant's token's own customer — as a day and a
month in USD and one kill-switch boolean. The full shapes (every ceiling, every switch) stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from costguard.admin.policy import Principal
from costguard.stores.base import KillSwitchState

__all__ = ["stops_caller"]


def _stops(scope: Mapping[str, str], tenant: str | None) -> bool:
    if not scope:
        return True  # the global switch stops everyone's calls (exempt features aside)
    return tenant is not None and scope in ({"customer": tenant}, {"tenant": tenant})


def stops_caller(switches: Iterable[KillSwitchState], caller: Principal) -> bool:
    """Whether an active switch stops every guarded call of the caller's scope: the global switch, and for a
    tenant's token also a switch on exactly `customer: <tenant>` or `tenant: <tenant>`."""
    return any(_stops(dict(switch.scope), caller.tenant) for switch in switches)

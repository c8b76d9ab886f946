"""Pure planning: labels → matching ceilings → counters → one reservation → threshold crossings.

Nothing here does I/O or reads a clock; the guard passes `now` in and carries out the plan. The
package re-exports the names the guard, the stores and the tests use:

- `keys`: counter keys, and the history and `max_instances` prefixes;
- `counters`: `CounterOp` and `ReservePlan`, and their JSON form;
- `overrides`: run-time `LimitOverride`s and how they combine with the config;
- `plan`: `plan_reservation` (matching, buckets, registries, how long counters are kept) and
  `overflow_plan`;
- `cache`: `PlanCache`, the plan reused call after call until a bucket rolls over;
- `crossings`: threshold levels and claiming crossings once;
- `evaluate`: the atomic reserve every store runs, and what a commit or release changes;
- `decisions`: a store's outcome as the caller's `Decision` and the audit record;
- `starts`: the counter a limit set at run time counts with, and what can tell its scope's spend so far;
- `leases`, `slices`, `leased`: the books of slices of hot counters, one slice's arithmetic (its write-ahead
  marks too), and a call served from slices.
"""

from __future__ import annotations

from costguard.engine.cache import PlanCache
from costguard.engine.counters import CounterId, CounterOp, ReservePlan, all_expired, force, op_from_json, op_to_json
from costguard.engine.crossings import (
    CLEARED,
    Crossing,
    claim_crossings,
    clear_previous,
    crossings_from,
    fired_name,
    may_cross,
    threshold_levels,
)
from costguard.engine.decisions import ceilings_data, decide, reported, reserve_record
from costguard.engine.evaluate import (
    CommitOutcome,
    ReserveOutcome,
    effective_amounts,
    evaluate_reserve,
    fits,
    settle_deltas,
    ttl_ran_out,
)
from costguard.engine.keys import HISTORY_PREFIX, INSTANCES_PREFIX, counter_key, history_key
from costguard.engine.leased import LeasedView, cold_plan, leased_ceilings, leased_view, local_outcome
from costguard.engine.leases import Grant, LeaseBook, Take, is_lease
from costguard.engine.overrides import LimitOverride, apply_overrides, effective_limits, index_overrides
from costguard.engine.plan import (
    EXPIRY_GRACE_S,
    HISTORY_KEEP_S,
    HISTORY_LIMIT,
    current_bucket,
    matching,
    overflow_plan,
    plan_reservation,
)
from costguard.engine.starts import LimitCounter, limit_counter

__all__ = [
    "CLEARED",
    "EXPIRY_GRACE_S",
    "HISTORY_KEEP_S",
    "HISTORY_LIMIT",
    "HISTORY_PREFIX",
    "INSTANCES_PREFIX",
    "CommitOutcome",
    "CounterId",
    "CounterOp",
    "Crossing",
    "Grant",
    "LeaseBook",
    "LeasedView",
    "LimitCounter",
    "LimitOverride",
    "PlanCache",
    "ReserveOutcome",
    "ReservePlan",
    "Take",
    "all_expired",
    "apply_overrides",
    "ceilings_data",
    "claim_crossings",
    "clear_previous",
    "cold_plan",
    "counter_key",
    "crossings_from",
    "current_bucket",
    "decide",
    "effective_amounts",
    "effective_limits",
    "evaluate_reserve",
    "fired_name",
    "fits",
    "force",
    "history_key",
    "index_overrides",
    "is_lease",
    "leased_ceilings",
    "leased_view",
    "limit_counter",
    "local_outcome",
    "matching",
    "may_cross",
    "op_from_json",
    "op_to_json",
    "overflow_plan",
    "plan_reservation",
    "reported",
    "reserve_record",
    "settle_deltas",
    "threshold_levels",
    "ttl_ran_out",
]

"""`redis://`, `rediss://`, `redis+cluster://`: every reserve and every commit is one EVALSHA.

The scripts in `lua/` carry out the engine's pure steps (`evaluate_reserve`, `claim_crossings`,
`clear_previous`) exactly as `MemoryStore` does under its lock. Every key of a store starts with
`{namespace}:`, one hash tag, so each script touches a single slot and runs unchanged on Redis
Cluster; all keys a script touches are computed here and declared in KEYS.

Keys (all under `{namespace}:`):

| key | type | what |
|---|---|---|
| `c:<counter key>` | hash | `c` committed, `r` reserved, `l` leased, `h` holders, `f` fired, `e` expiry, `m` meta… |
| `i:<period>:<bucket>` | set | counters of one period bucket (for status without SCAN) |
| `exp` | sorted set | counters by expires_at (for `purge`, which follows the caller's clock) |
| `r:<reservation id>` | string | its counters (`engine.op_to_json` list) while open, `1` once settled |
| `audit`, `audit:seq` | stream, string | the audit log; entry `<n>-0` is record n (`j`: the record as JSON) |
| `ctl` | hash | kill switches (`k|<scope>`) and limit overrides (`o|<scope>|<period>|<unit>`) |
| `k:<key>` | string | cached fallback values: 8-byte expires_at, then the value |

A counter's `m` is its meta JSON and `b` its ttl's start; `l` is the part of `r` live slices hold
(`engine.leases`) and `h` how many hold it (a counter written before they existed reads 0 for both).

A reserve's record is rebuilt when read: a refusal's data from `bo`, `bs`, `bl` (the counter, its
total, its limit), an allowed reserve's `ceilings` from `cs` (its counters) and `ct` (their totals).

Money is integer micro-dollars. Counters change only through HINCRBY (exact 64-bit integers);
the scripts compare totals as Lua doubles, exact below 2^53 micro-dollars (about $9 billion) per
counter. Integers travel to the scripts as strings.

The parts: `_redis_conn` (URL options, clients that never retry, scripts, circuit breaker, errors),
`_redis_clients` (the store's connections and its error boundary) and `_redis_codec` (keys, script
arguments and replies; no I/O).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from costguard.engine import CommitOutcome, CounterOp, LimitOverride, ReserveOutcome, ReservePlan
from costguard.errors import StoreError
from costguard.events import AuditQuery, AuditRecord
from costguard.model import Period, Unit, encode_scope
from costguard.stores._redis_clients import RedisClients, amapped, mapped, noscript
from costguard.stores._redis_codec import MAX_SEQ, Codec, hash_reply, previous_id, record_from, record_json, text
from costguard.stores._redis_conn import SCRIPTS, map_error, parse_options, redacted, redis_errors
from costguard.stores.base import (
    Control,
    CounterRow,
    KillSwitchState,
    RunKeyState,
    Store,
    killswitch_entry,
    override_entry,
    run_key_entry,
)

__all__ = ["RedisStore"]

_OPEN_CACHE = 100_000  # reservations this process made, kept to settle them in one round trip
_TOMBSTONE_MS = 86_400_000  # as long as a settled reservation is kept
# Asked here too, not only in `_redis_clients`: without redis-py importing this module fails (and
# `open_store` names the extra to install) even when the other modules were imported before.
_ERRORS = redis_errors()


class RedisStore(RedisClients, Store):
    """The Redis store. URL options: `namespace`, `timeout_ms`, `connect_timeout_ms`, `breaker_s`, `maxlen`.

    `client` / `async_client_factory` inject ready clients (e.g. fakeredis in tests); by default the
    store opens one connection pool from the URL, and one per event loop for the async methods.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str | None = None,
        timeout_ms: float | None = None,
        connect_timeout_ms: float | None = None,
        breaker_s: float | None = None,
        maxlen: int | None = None,
        client: Any = None,
        async_client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.url = redacted(url)  # shown in reprs and logs: never the password
        options = parse_options(
            url,
            namespace=namespace,
            timeout_ms=timeout_ms,
            connect_timeout_ms=connect_timeout_ms,
            breaker_s=breaker_s,
            maxlen=maxlen,
        )
        self.namespace = options.namespace
        super().__init__(options, f"{options.where} (namespace {self.namespace!r})", client, async_client_factory)
        self.codec = Codec(self.namespace, options.maxlen)
        self.prefix = self.codec.prefix
        self._open: OrderedDict[str, tuple[CounterOp, ...]] = OrderedDict()
        self._startup()

    # ----------------------------------------------------------------- encoding the engine's plans
    def _reserved(self, plan: ReservePlan, reply: Sequence[int]) -> ReserveOutcome:
        outcome = self.codec.reserve_outcome(plan, reply)
        if outcome.allowed:
            with self._lock:
                self._open[plan.reservation_id] = plan.settled_counters
                if len(self._open) > _OPEN_CACHE:
                    self._open.popitem(last=False)
        return outcome

    def _settled(self, reservation_id: str, ops: tuple[CounterOp, ...], reply: Sequence[int]) -> CommitOutcome:
        with self._lock:
            self._open.pop(reservation_id, None)
        return self.codec.commit_outcome(ops, reply)

    def _known_ops(self, reservation_id: str) -> tuple[CounterOp, ...] | None:
        with self._lock:
            return self._open.get(reservation_id)

    # ----------------------------------------------------------------- reserve / settle
    @mapped
    def reserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        keys, args = self.codec.reserve_call(plan, record)
        return self._reserved(plan, self._eval(SCRIPTS["reserve"], keys, args))

    @amapped
    async def areserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        keys, args = self.codec.reserve_call(plan, record)
        return self._reserved(plan, await self._aeval(SCRIPTS["reserve"], keys, args))

    @mapped
    def settle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        return self._settle_one(reservation_id, actual, at, record)

    def _settle_one(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        ops = self._known_ops(reservation_id)
        while ops is None:
            # Reserved by another process (or long ago): read its counters first, a second round trip.
            key = self.codec.reservation(reservation_id)
            raw = self._client().execute_command("GET", key)
            if raw is None and actual is None and not self._tombstone(key):
                continue  # the reserve got there between the two commands: read it again
            ops = self.codec.ops_from(raw)
            if ops is None:
                return CommitOutcome(applied=False)
        keys, args = self.codec.settle_call(reservation_id, ops, actual, at, record)
        return self._settled(reservation_id, ops, self._eval(SCRIPTS["settle"], keys, args))

    def _tombstone(self, key: str) -> bool:
        """A release of a reservation not (yet) stored: mark it settled so a reserve arriving late does
        nothing. False when the reserve got there first (it is then read again and released)."""
        return bool(self._client().execute_command("SET", key, "1", "PX", _TOMBSTONE_MS, "NX"))

    @amapped
    async def asettle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        ops = self._known_ops(reservation_id)
        while ops is None:
            key = self.codec.reservation(reservation_id)
            raw = await self._aclient().execute_command("GET", key)
            if (
                raw is None
                and actual is None
                and not await self._aclient().execute_command("SET", key, "1", "PX", _TOMBSTONE_MS, "NX")
            ):
                continue  # the reserve got there between the two commands: read it again
            ops = self.codec.ops_from(raw)
            if ops is None:
                return CommitOutcome(applied=False)
        keys, args = self.codec.settle_call(reservation_id, ops, actual, at, record)
        return self._settled(reservation_id, ops, await self._aeval(SCRIPTS["settle"], keys, args))

    def settle_many(
        self, items: Sequence[tuple[str, Mapping[Unit, int] | None, float, AuditRecord | None]]
    ) -> list[CommitOutcome | StoreError]:
        """A batch of settles in one pipelined round trip (two when some were reserved elsewhere)."""
        if not items:
            return []
        try:
            self._breaker.check()
            out = self._settle_batch(items)
        except StoreError as exc:
            return [exc] * len(items)
        except _ERRORS as exc:
            return [map_error(exc, self._breaker, "settle_many", self.where)] * len(items)
        self._breaker.succeeded()
        return out

    def _settle_batch(
        self, items: Sequence[tuple[str, Mapping[Unit, int] | None, float, AuditRecord | None]]
    ) -> list[CommitOutcome | StoreError]:
        client = self._client()
        known = [self._known_ops(item[0]) for item in items]
        missing = [index for index, ops in enumerate(known) if ops is None]
        if missing:
            pipe = client.pipeline(transaction=False)
            for index in missing:
                pipe.execute_command("GET", self.codec.reservation(items[index][0]))
            for index, raw in zip(missing, pipe.execute(), strict=True):
                known[index] = self.codec.ops_from(raw)
        out: list[CommitOutcome | StoreError] = [CommitOutcome(applied=False)] * len(items)
        for index in missing:
            if known[index] is None and items[index][1] is None:
                out[index] = self._settle_one(*items[index])  # a release of an unknown id leaves a tombstone
        calls = {
            index: (
                ops,
                self.codec.settle_call(items[index][0], ops, items[index][1], items[index][2], items[index][3]),
            )
            for index, ops in enumerate(known)
            if ops is not None
        }
        script = SCRIPTS["settle"]
        for attempt in range(2):
            if not calls:
                break
            pipe = client.pipeline(transaction=False)
            for _, (keys, args) in calls.values():
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            retry = {}
            for (index, (ops, call)), reply in zip(calls.items(), pipe.execute(raise_on_error=False), strict=True):
                if isinstance(reply, noscript()) and attempt == 0:
                    retry[index] = (ops, call)  # it did not run: safe to send again
                elif isinstance(reply, Exception):
                    out[index] = map_error(reply, self._breaker, "settle_many", self.where)
                else:
                    out[index] = self._settled(items[index][0], ops, reply)
            if retry:
                client.execute_command("SCRIPT", "LOAD", script.source)
            calls = retry
        return out

    # ----------------------------------------------------------------- counters
    @mapped
    def totals(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        pipe = self._client().pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("HMGET", self.codec.counter(key), "c", "r")
        return [int(c or 0) + int(r or 0) for c, r in pipe.execute()]

    @mapped
    def start_counter(self, op: CounterOp, committed: int, at: float) -> bool:
        keys, args = self.codec.start_call(op, committed, at)
        return bool(self._eval(SCRIPTS["start"], keys, args))

    @mapped
    def list_counters(self, buckets: Mapping[Period, str]) -> list[CounterRow]:
        if not buckets:
            return []
        client = self._client()
        pipe = client.pipeline(transaction=False)
        for period, bucket in buckets.items():
            pipe.execute_command("SMEMBERS", self.codec.index(period.value, bucket))
        members = sorted({member for found in pipe.execute() for member in found})
        if not members:
            return []
        pipe = client.pipeline(transaction=False)
        for member in members:
            pipe.execute_command("HMGET", member, "c", "r", "m", "l", "h")
        return [
            self.codec.counter_row(member, committed, reserved, meta, leased, holders)
            for member, (committed, reserved, meta, leased, holders) in zip(members, pipe.execute(), strict=True)
            if meta is not None  # expired: purge trims the index
        ]

    @mapped
    def purge(self, now: float) -> int:
        client = self._client()
        removed = 0
        while True:
            members = client.execute_command("ZRANGEBYSCORE", self.codec.exp, "-inf", f"({now!r}", "LIMIT", 0, 500)
            if not members:
                return removed
            keys, args = self.codec.purge_call(now, members)
            removed += int(self._eval(SCRIPTS["purge"], keys, args))
            if len(members) < 500:
                return removed

    # ----------------------------------------------------------------- control (kill switches, overrides)
    @mapped
    def control(self) -> Control:
        return self.codec.control_from(hash_reply(self._client().execute_command("HGETALL", self.codec.ctl)))

    @amapped
    async def acontrol(self) -> Control:
        return self.codec.control_from(hash_reply(await self._aclient().execute_command("HGETALL", self.codec.ctl)))

    @mapped
    def set_killswitch(self, state: KillSwitchState, active: bool, record: AuditRecord) -> bool:
        field = "k|" + encode_scope(dict(state.scope))
        keys, args = self.codec.control_call("on" if active else "off", field, killswitch_entry(state), record)
        return bool(self._eval(SCRIPTS["control"], keys, args))

    @mapped
    def set_override(self, override: LimitOverride, clear: bool, record: AuditRecord) -> None:
        field = f"o|{override.scope_key}|{override.period.value}|{override.unit.value}"
        keys, args = self.codec.control_call("del" if clear else "set", field, override_entry(override), record)
        self._eval(SCRIPTS["control"], keys, args)

    @mapped
    def set_run_key(self, state: RunKeyState, record: AuditRecord, remove: bool = False) -> None:
        keys, args = self.codec.control_call("del" if remove else "set", f"r|{state.id}", run_key_entry(state), record)
        self._eval(SCRIPTS["control"], keys, args)

    # ----------------------------------------------------------------- audit log
    @mapped
    def append(self, records: Sequence[AuditRecord]) -> None:
        for start in range(0, len(records), 500):
            args = [self.codec.maxlen, *map(record_json, records[start : start + 500])]
            self._eval(SCRIPTS["append"], [self.codec.stream, self.codec.seq], args)

    @mapped
    def audit(self, query: AuditQuery) -> list[AuditRecord]:
        """Newest first; filters are applied while paging back through the stream (bounded by `maxlen`)."""
        if query.limit <= 0 or (query.before_id is not None and query.before_id <= 1):
            return []
        # Entry `<n>-0` is record n: the id before `before_id` ends the range (inclusive, any version).
        end = "+" if query.before_id is None else f"{query.before_id - 1}-{MAX_SEQ}"
        filtered = any(v is not None for v in (query.since, query.until, query.feature, query.customer, query.decision))
        page = min(1000, max(100, query.limit * 4)) if filtered else query.limit
        client = self._client()
        out: list[AuditRecord] = []
        while True:
            entries = client.execute_command("XREVRANGE", self.codec.stream, end, "-", "COUNT", page)
            for entry_id, fields in entries:
                record = record_from(entry_id, fields)
                if query.matches(record):
                    out.append(record)
                    if len(out) >= query.limit:
                        return out
            if len(entries) < page:
                return out
            end = previous_id(text(entries[-1][0]))

    # ----------------------------------------------------------------- fallback cache
    @mapped
    def cache_get(self, key: str, now: float) -> bytes | None:
        return self.codec.cache_value(self._client().execute_command("GET", self.codec.cache(key)), now)

    @amapped
    async def acache_get(self, key: str, now: float) -> bytes | None:
        return self.codec.cache_value(await self._aclient().execute_command("GET", self.codec.cache(key)), now)

    @mapped
    def cache_set(self, key: str, value: bytes, expires_at: float) -> None:
        payload, px = self.codec.cache_payload(value, expires_at)
        self._client().execute_command("SET", self.codec.cache(key), payload, "PX", px)

    @amapped
    async def acache_set(self, key: str, value: bytes, expires_at: float) -> None:
        payload, px = self.codec.cache_payload(value, expires_at)
        await self._aclient().execute_command("SET", self.codec.cache(key), payload, "PX", px)

    # ----------------------------------------------------------------- lifecycle
    @property
    def identity(self) -> str:
        return f"{self.url}#{self.namespace}"

    def __repr__(self) -> str:
        return f"RedisStore({self.where})"

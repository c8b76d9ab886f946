"""`redis://`, `rediss://`, `redis+cluster://`: every reserve and every commit is one EVALSHA.

The scripts in `lua/` carry out the engine's pure steps (`evaluate_reserve`, `claim_crossings`,
`clear_previous`) exactly as `MemoryStore` does under its lock. Every key of a store starts with
`{namespace}:`, one hash tag, so each script touches a single slot and runs unchanged on Redis
Cluster; all keys a script touches are computed here and declared in KEYS.

Keys (all under `{namespace}:`):

| key | type | what |
|---|---|---|
| `c:<counter key>` | hash | `c` committed, `r` reserved, `f` thresholds fired, `e` expires_at, `m` meta JSON |
| `i:<period>:<bucket>` | set | counters of one period bucket (for status without SCAN) |
| `exp` | sorted set | counters by expires_at (for `purge`, which follows the caller's clock) |
| `r:<reservation id>` | string | its counters (`engine.op_to_json` list) while open, `1` once settled |
| `audit`, `audit:seq` | stream, string | the audit log; entry `<n>-0` is record n (`j`: the record as JSON) |
| `ctl` | hash | kill switches (`k|<scope>`) and limit overrides (`o|<scope>|<period>|<unit>`) |
| `k:<key>` | string | cached fallback values: 8-byte expires_at, then the value |

Money is integer micro-dollars. Counters change only through HINCRBY (exact 64-bit integers);
the scripts compare totals as Lua doubles, exact below 2^53 micro-dollars (about $9 billion) per
counter. Integers travel to the scripts as strings.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from costguard.engine import (
    CommitOutcome,
    CounterOp,
    Crossing,
    LimitOverride,
    ReserveOutcome,
    ReservePlan,
    op_from_json,
    settle_deltas,
)
from costguard.engine import fired_name as _fired_name
from costguard.errors import StoreError
from costguard.events import AuditQuery, AuditRecord
from costguard.model import Period, Unit, encode_scope, micros_to_usd
from costguard.stores._redis_conn import (
    SCRIPTS,
    AsyncClient,
    Breaker,
    RedisOptions,
    Script,
    SyncClient,
    async_client,
    map_error,
    parse_options,
    redis_errors,
    sync_client,
)
from costguard.stores.base import Control, CounterRow, KillSwitchState, Store

__all__ = ["RedisStore"]

log = logging.getLogger("costguard")

P = ParamSpec("P")
T = TypeVar("T")

_OPEN_CACHE = 100_000  # reservations this process made, kept to settle them in one round trip
_ENCODED_CACHE = 50_000  # counters whose encoded constants are kept
_MAX_SEQ = "18446744073709551615"
_CACHE_HEAD = struct.Struct(">d")
_CROSSING_REASONS = {0: (False, ""), 1: (True, "limit raised"), 2: (True, "new period")}
_ERRORS = redis_errors()


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _num(value: float | None) -> str:
    return "null" if value is None else repr(value)


def _record_json(record: AuditRecord | None) -> str:
    """One audit record as the scripts store it: `[at, decision, labels, reservation id, data]`."""
    if record is None:
        return ""
    return _dumps([record.at, record.decision, dict(record.labels), record.reservation_id, dict(record.data)])


@dataclass(frozen=True)
class _Encoded:
    """A counter's script arguments that stay the same from call to call, and what they were built from.

    The key fixes the ceiling, scope, period, unit and bucket; the rest is checked on every use.
    """

    limit: int
    hard: bool
    levels: tuple[tuple[float, int], ...]
    resets_at: float | None
    expires_at: float | None
    previous_key: str | None
    reserve_keys: tuple[str, str, str]  # counter, previous period's counter (or itself), bucket index
    settle_keys: tuple[str, str]
    reserve_tail: tuple[str, ...]  # what follows the amount in reserve.lua's per-counter arguments
    settle_tail: tuple[str, ...]  # what follows the two changes in settle.lua's
    json_head: str  # engine.op_to_json(op) as text up to the amount…
    json_tail: str  # …and after it

    def fits(self, op: CounterOp) -> bool:
        return (
            self.limit == op.limit
            and self.expires_at == op.expires_at
            and self.levels == op.levels
            and self.hard == op.hard
            and self.previous_key == op.previous_key
            and self.resets_at == op.resets_at
        )


def _mapped(method: Callable[Concatenate[RedisStore, P], T]) -> Callable[Concatenate[RedisStore, P], T]:
    """The one boundary where redis-py errors become costguard's, behind the circuit breaker."""

    def wrapper(self: RedisStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        self._breaker.check()
        try:
            result = method(self, *args, **kwargs)
        except _ERRORS as exc:
            raise map_error(exc, self._breaker, method.__name__, self.where) from exc
        self._breaker.succeeded()
        return result

    functools.update_wrapper(wrapper, method)
    return wrapper


def _amapped(
    method: Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, T]]:
    """`_mapped` for the native async methods."""

    async def wrapper(self: RedisStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        self._breaker.check()
        try:
            result = await method(self, *args, **kwargs)
        except _ERRORS as exc:
            raise map_error(exc, self._breaker, method.__name__.lstrip("a"), self.where) from exc
        self._breaker.succeeded()
        return result

    functools.update_wrapper(wrapper, method)
    return wrapper


class RedisStore(Store):
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
        self.url = url
        self.options: RedisOptions = parse_options(
            url,
            namespace=namespace,
            timeout_ms=timeout_ms,
            connect_timeout_ms=connect_timeout_ms,
            breaker_s=breaker_s,
            maxlen=maxlen,
        )
        self.namespace = self.options.namespace
        self.where = f"{self.options.where} (namespace {self.namespace!r})"
        self.prefix = "{" + self.namespace + "}:"
        self._stream = self.prefix + "audit"
        self._seq = self.prefix + "audit:seq"
        self._exp = self.prefix + "exp"
        self._ctl = self.prefix + "ctl"
        self._maxlen = str(self.options.maxlen)
        self._breaker = Breaker(self.options.breaker_s, self.where)
        self._lock = threading.Lock()
        self._client_obj: SyncClient | None = client
        self._async_factory: Callable[[], Any] = async_client_factory or (lambda: async_client(self.options))
        self._async: dict[asyncio.AbstractEventLoop, AsyncClient] = {}
        self._open: OrderedDict[str, tuple[CounterOp, ...]] = OrderedDict()
        self._encoded: dict[str, _Encoded] = {}
        self._startup()

    # ----------------------------------------------------------------- connections and scripts
    def _client(self) -> SyncClient:
        client = self._client_obj
        if client is None:
            with self._lock:
                if self._client_obj is None:
                    self._client_obj = sync_client(self.options)  # a cluster client connects here
                client = self._client_obj
        return client

    def _aclient(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            with self._lock:
                for old in [old for old in self._async if old.is_closed()]:
                    del self._async[old]  # its connections died with it
                client = self._async[loop] = self._async_factory()
        return client

    def _startup(self) -> None:
        """Load the scripts once and check the eviction policy; an outage here only opens the breaker."""
        try:
            client = self._client()
            for script in SCRIPTS.values():
                client.execute_command("SCRIPT", "LOAD", script.source)
        except _ERRORS as exc:
            error = map_error(exc, self._breaker, "open", self.where)
            log.warning("costguard: %s; calls follow on_store_error until it answers", error)
            return
        try:
            reply = client.execute_command("CONFIG", "GET", "maxmemory-policy")
        except _ERRORS:
            return  # managed Redis often forbids CONFIG
        policy = _config_value(reply)
        if policy.startswith("allkeys-"):
            log.warning(
                "costguard: Redis at %s evicts any key under memory pressure (maxmemory-policy %s): an evicted "
                "counter is a budget silently reset to zero. Set maxmemory-policy to noeviction or volatile-* "
                "(costguard's counters only carry expiries they need) or give Redis more memory.",
                self.options.where,
                policy,
            )

    def _eval(self, script: Script, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        client = self._client()
        try:
            return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except _noscript():
            # The server lost its script cache (restart, failover, SCRIPT FLUSH): the script didn't
            # run, so loading it and trying once more can't count anything twice.
            client.execute_command("SCRIPT", "LOAD", script.source)
            return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _aeval(self, script: Script, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        client = self._aclient()
        try:
            return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except _noscript():
            await client.execute_command("SCRIPT", "LOAD", script.source)
            return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    # ----------------------------------------------------------------- encoding the engine's plans
    def _encode(self, op: CounterOp) -> _Encoded:
        """The cached constant arguments of a counter (built again when its limit or expiry changed)."""
        cached = self._encoded.get(op.key)
        if cached is not None and cached.fits(op):
            return cached
        p = self.prefix
        key = p + "c:" + op.key
        index = f"{p}i:{op.period.value}:{op.bucket}"
        scope = [list(item) for item in op.scope]
        member = f"{op.period.value}|{op.bucket}|{op.key}"
        meta = _dumps([op.ceiling_id, scope, op.period.value, op.unit.value, op.bucket])
        expires = "" if op.expires_at is None else repr(op.expires_at)
        bucket_expires = "0" if op.period is Period.TOTAL else "1"
        lowest = str(op.levels[0][1]) if op.levels else ""
        levels = " ".join(f"{_fired_name(t)} {level} {1 if t >= 1.0 else 0}" for t, level in op.levels)
        head = _dumps([op.key, op.ceiling_id, scope, op.period.value, op.unit.value, op.bucket])[:-1]
        made = _Encoded(
            limit=op.limit,
            hard=op.hard,
            levels=op.levels,
            resets_at=op.resets_at,
            expires_at=op.expires_at,
            previous_key=op.previous_key,
            reserve_keys=(key, key if op.previous_key is None else p + "c:" + op.previous_key, index),
            settle_keys=(key, index),
            reserve_tail=(
                str(op.limit),
                "1" if op.hard else "0",
                "0" if op.previous_key is None else "1",
                expires,
                bucket_expires,
                member,
                meta,
                lowest,
                levels,
            ),
            settle_tail=(str(op.limit), expires, bucket_expires, member, meta, lowest, levels),
            json_head=head + ",",
            json_tail=(
                f",{op.limit},{'true' if op.hard else 'false'},{_dumps([list(v) for v in op.levels])},"
                f"{_num(op.resets_at)},{_num(op.expires_at)},{_dumps(op.previous_key)}]"
            ),
        )
        if len(self._encoded) >= _ENCODED_CACHE:
            self._encoded.clear()
        self._encoded[op.key] = made
        return made

    def _reserve_call(self, plan: ReservePlan, record: AuditRecord | None) -> tuple[list[str], list[str]]:
        keys = [self.prefix + "r:" + plan.reservation_id, self._stream, self._seq, self._exp]
        args = ["1" if plan.force else "0", str(len(plan.counters)), repr(plan.at), "", _record_json(record)]
        args.append(self._maxlen)
        ops_json = []
        for op in plan.counters:
            encoded = self._encode(op)
            amount = str(op.amount)
            keys += encoded.reserve_keys
            args.append(amount)
            args += encoded.reserve_tail
            ops_json.append(encoded.json_head + amount + encoded.json_tail)
        args[3] = "[" + ",".join(ops_json) + "]"
        return keys, args

    def _settle_call(
        self,
        reservation_id: str,
        ops: Sequence[CounterOp],
        actual: Mapping[Unit, int] | None,
        at: float,
        record: AuditRecord | None,
    ) -> tuple[list[str], list[str]]:
        keys = [self.prefix + "r:" + reservation_id, self._stream, self._seq, self._exp]
        args = [str(len(ops)), repr(at), _record_json(record), self._maxlen]
        for op, (d_reserved, d_committed) in zip(ops, settle_deltas(ops, actual), strict=True):
            encoded = self._encode(op)
            keys += encoded.settle_keys
            args.append(str(d_reserved))
            args.append(str(d_committed))
            args += encoded.settle_tail
        return keys, args

    @staticmethod
    def _crossings(ops: Sequence[CounterOp], flat: Sequence[int]) -> tuple[Crossing, ...]:
        out = []
        for at in range(0, len(flat), 4):
            op = ops[int(flat[at]) - 1]
            cleared, reason = _CROSSING_REASONS[int(flat[at + 3])]
            out.append(Crossing(op.levels[int(flat[at + 1]) - 1][0], op, int(flat[at + 2]), cleared, reason))
        return tuple(out)

    def _reserved(self, plan: ReservePlan, reply: Sequence[int]) -> ReserveOutcome:
        if reply[0] == 2:
            outcome = ReserveOutcome(True, ())
        else:
            n = int(reply[2])
            outcome = ReserveOutcome(
                reply[0] == 1,
                tuple(int(total) for total in reply[3 : 3 + n]),
                int(reply[1]) - 1 if reply[1] else None,
                self._crossings(plan.counters, reply[3 + n :]),
            )
        if outcome.allowed:
            with self._lock:
                self._open[plan.reservation_id] = plan.counters
                if len(self._open) > _OPEN_CACHE:
                    self._open.popitem(last=False)
        return outcome

    def _settled(self, reservation_id: str, ops: tuple[CounterOp, ...], reply: Sequence[int]) -> CommitOutcome:
        with self._lock:
            self._open.pop(reservation_id, None)
        if reply[0] != 1:
            return CommitOutcome(applied=False)
        n = int(reply[1])
        totals = tuple(int(total) for total in reply[2 : 2 + n])
        return CommitOutcome(True, ops, totals, self._crossings(ops, reply[2 + n :]))

    def _known_ops(self, reservation_id: str) -> tuple[CounterOp, ...] | None:
        with self._lock:
            return self._open.get(reservation_id)

    @staticmethod
    def _ops_from(raw: bytes | str | None) -> tuple[CounterOp, ...] | None:
        """A reservation's counters from its key: None when unknown or already settled (`1`)."""
        if raw is None or raw in (b"1", "1"):
            return None
        return tuple(op_from_json(item) for item in json.loads(raw))

    # ----------------------------------------------------------------- reserve / settle
    @_mapped
    def reserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        keys, args = self._reserve_call(plan, record)
        return self._reserved(plan, self._eval(SCRIPTS["reserve"], keys, args))

    @_amapped
    async def areserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        keys, args = self._reserve_call(plan, record)
        return self._reserved(plan, await self._aeval(SCRIPTS["reserve"], keys, args))

    @_mapped
    def settle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        ops = self._known_ops(reservation_id)
        if ops is None:
            # Reserved by another process (or long ago): read its counters first, a second round trip.
            ops = self._ops_from(self._client().execute_command("GET", self.prefix + "r:" + reservation_id))
            if ops is None:
                return CommitOutcome(applied=False)
        keys, args = self._settle_call(reservation_id, ops, actual, at, record)
        return self._settled(reservation_id, ops, self._eval(SCRIPTS["settle"], keys, args))

    @_amapped
    async def asettle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        ops = self._known_ops(reservation_id)
        if ops is None:
            raw = await self._aclient().execute_command("GET", self.prefix + "r:" + reservation_id)
            ops = self._ops_from(raw)
            if ops is None:
                return CommitOutcome(applied=False)
        keys, args = self._settle_call(reservation_id, ops, actual, at, record)
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
                pipe.execute_command("GET", self.prefix + "r:" + items[index][0])
            for index, raw in zip(missing, pipe.execute(), strict=True):
                known[index] = self._ops_from(raw)
        out: list[CommitOutcome | StoreError] = [CommitOutcome(applied=False)] * len(items)
        calls = {
            index: (ops, self._settle_call(items[index][0], ops, items[index][1], items[index][2], items[index][3]))
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
                if isinstance(reply, _noscript()) and attempt == 0:
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
    @_mapped
    def totals(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        pipe = self._client().pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("HMGET", self.prefix + "c:" + key, "c", "r")
        return [int(c or 0) + int(r or 0) for c, r in pipe.execute()]

    @_mapped
    def list_counters(self, buckets: Mapping[Period, str]) -> list[CounterRow]:
        if not buckets:
            return []
        client = self._client()
        pipe = client.pipeline(transaction=False)
        for period, bucket in buckets.items():
            pipe.execute_command("SMEMBERS", f"{self.prefix}i:{period.value}:{bucket}")
        members = sorted({member for found in pipe.execute() for member in found})
        if not members:
            return []
        pipe = client.pipeline(transaction=False)
        for member in members:
            pipe.execute_command("HMGET", member, "c", "r", "m")
        skip = len(self.prefix) + 2
        rows = []
        for member, (committed, reserved, meta) in zip(members, pipe.execute(), strict=True):
            if meta is None:
                continue  # expired; purge trims the index
            ceiling_id, scope, period, unit, bucket = json.loads(meta)
            rows.append(
                CounterRow(
                    _text(member)[skip:],
                    ceiling_id,
                    tuple((str(a), str(b)) for a, b in scope),
                    Period(period),
                    Unit(unit),
                    bucket,
                    int(committed or 0),
                    int(reserved or 0),
                )
            )
        return rows

    @_mapped
    def purge(self, now: float) -> int:
        client = self._client()
        removed = 0
        while True:
            members = client.execute_command("ZRANGEBYSCORE", self._exp, "-inf", f"({now!r}", "LIMIT", 0, 500)
            if not members:
                return removed
            keys = [self._exp]
            for member in members:
                period, bucket, key = _text(member).split("|", 2)
                keys += (self.prefix + "c:" + key, f"{self.prefix}i:{period}:{bucket}")
            removed += int(self._eval(SCRIPTS["purge"], keys, [repr(now), *map(_text, members)]))
            if len(members) < 500:
                return removed

    # ----------------------------------------------------------------- control (kill switches, overrides)
    @staticmethod
    def _control_from(fields: Mapping[bytes, bytes]) -> Control:
        switches: list[KillSwitchState] = []
        overrides: list[LimitOverride] = []
        for field, value in sorted(fields.items()):
            data = json.loads(value)
            scope = tuple((str(a), str(b)) for a, b in data["scope"])
            if field.startswith(b"k|"):
                switches.append(KillSwitchState(scope, data["reason"], data["actor"], data["since"]))
            elif field.startswith(b"o|"):
                overrides.append(
                    LimitOverride(
                        scope,
                        Period(data["period"]),
                        Unit(data["unit"]),
                        int(data["amount"]),
                        data["reason"],
                        data["actor"],
                        data["at"],
                    )
                )
        return Control(tuple(switches), tuple(overrides))

    @_mapped
    def control(self) -> Control:
        return self._control_from(_hash(self._client().execute_command("HGETALL", self._ctl)))

    @_amapped
    async def acontrol(self) -> Control:
        return self._control_from(_hash(await self._aclient().execute_command("HGETALL", self._ctl)))

    def _control_call(self, mode: str, field: str, value: object, record: AuditRecord) -> tuple[list[str], list[str]]:
        keys = [self._ctl, self._stream, self._seq]
        return keys, [mode, field, _dumps(value), _record_json(record), self._maxlen]

    @_mapped
    def set_killswitch(self, state: KillSwitchState, active: bool, record: AuditRecord) -> bool:
        value = {
            "scope": [list(item) for item in state.scope],
            "reason": state.reason,
            "actor": state.actor,
            "since": state.since,
        }
        field = "k|" + encode_scope(dict(state.scope))
        keys, args = self._control_call("on" if active else "off", field, value, record)
        return bool(self._eval(SCRIPTS["control"], keys, args))

    @_mapped
    def set_override(self, override: LimitOverride, clear: bool, record: AuditRecord) -> None:
        value = {
            "scope": [list(item) for item in override.scope],
            "period": override.period.value,
            "unit": override.unit.value,
            "amount": override.amount,
            "reason": override.reason,
            "actor": override.actor,
            "at": override.at,
        }
        field = f"o|{override.scope_key}|{override.period.value}|{override.unit.value}"
        keys, args = self._control_call("del" if clear else "set", field, value, record)
        self._eval(SCRIPTS["control"], keys, args)

    # ----------------------------------------------------------------- audit log
    @_mapped
    def append(self, records: Sequence[AuditRecord]) -> None:
        for start in range(0, len(records), 500):
            args = [self._maxlen, *map(_record_json, records[start : start + 500])]
            self._eval(SCRIPTS["append"], [self._stream, self._seq], args)

    @_mapped
    def audit(self, query: AuditQuery) -> list[AuditRecord]:
        """Newest first; filters are applied while paging back through the stream (bounded by `maxlen`)."""
        if query.limit <= 0 or (query.before_id is not None and query.before_id <= 1):
            return []
        # Entry `<n>-0` is record n: the id before `before_id` ends the range (inclusive, any version).
        end = "+" if query.before_id is None else f"{query.before_id - 1}-{_MAX_SEQ}"
        filtered = any(v is not None for v in (query.since, query.until, query.feature, query.customer, query.decision))
        page = min(1000, max(100, query.limit * 4)) if filtered else query.limit
        client = self._client()
        out: list[AuditRecord] = []
        while True:
            entries = client.execute_command("XREVRANGE", self._stream, end, "-", "COUNT", page)
            for entry_id, fields in entries:
                record = _record_from(entry_id, fields)
                if query.matches(record):
                    out.append(record)
                    if len(out) >= query.limit:
                        return out
            if len(entries) < page:
                return out
            end = _previous_id(_text(entries[-1][0]))

    # ----------------------------------------------------------------- fallback cache
    def _cache_key(self, key: str) -> bytes:
        return (self.prefix + "k:").encode() + key.encode("utf-8", "surrogatepass")

    @staticmethod
    def _cache_value(raw: bytes | None, now: float) -> bytes | None:
        if raw is None or len(raw) < _CACHE_HEAD.size:
            return None
        (expires,) = _CACHE_HEAD.unpack_from(raw)
        return bytes(raw[_CACHE_HEAD.size :]) if expires > now else None

    @staticmethod
    def _cache_px(expires_at: float) -> int:
        # Redis drops the entry on its own clock a minute after it expires on ours (the exact expiry is
        # checked on read against the caller's clock, which may be skewed or, in tests, fake).
        return max(60_000, math.ceil((expires_at - time.time()) * 1000) + 60_000)

    @_mapped
    def cache_get(self, key: str, now: float) -> bytes | None:
        return self._cache_value(self._client().execute_command("GET", self._cache_key(key)), now)

    @_amapped
    async def acache_get(self, key: str, now: float) -> bytes | None:
        return self._cache_value(await self._aclient().execute_command("GET", self._cache_key(key)), now)

    @_mapped
    def cache_set(self, key: str, value: bytes, expires_at: float) -> None:
        payload = _CACHE_HEAD.pack(expires_at) + value
        self._client().execute_command("SET", self._cache_key(key), payload, "PX", self._cache_px(expires_at))

    @_amapped
    async def acache_set(self, key: str, value: bytes, expires_at: float) -> None:
        payload = _CACHE_HEAD.pack(expires_at) + value
        await self._aclient().execute_command("SET", self._cache_key(key), payload, "PX", self._cache_px(expires_at))

    # ----------------------------------------------------------------- lifecycle
    async def aclose(self) -> None:
        """Close the connections of the running event loop's client (call before the loop ends)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.pop(loop, None)
        if client is not None:
            await client.aclose()

    def close(self) -> None:
        """Disconnect the pool; async clients are closed on their loops where those still run."""
        with self._lock:
            client, self._client_obj = self._client_obj, None
            clients, self._async = self._async, {}
        if client is not None:
            client.close()
        for loop, aclient in clients.items():
            _close_on_loop(loop, aclient)

    def __repr__(self) -> str:
        return f"RedisStore({self.where})"


def _noscript() -> type[Exception]:
    from redis.exceptions import NoScriptError

    return NoScriptError


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _hash(reply: Any) -> dict[bytes, bytes]:
    if isinstance(reply, dict):
        return {k if isinstance(k, bytes) else str(k).encode(): v for k, v in reply.items()}
    items = list(reply or ())
    return dict(zip(items[::2], items[1::2], strict=True))


def _config_value(reply: Any) -> str:
    """`CONFIG GET name` answered as a dict (redis-py callbacks) or a flat list."""
    values = list(reply.values()) if isinstance(reply, dict) else list(reply or ())[1::2]
    return _text(values[0]).lower() if values else ""


def _previous_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    if int(seq or 0) > 0:
        return f"{ms}-{int(seq) - 1}"
    return f"{int(ms) - 1}-{_MAX_SEQ}"


def _record_from(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> AuditRecord:
    at, decision, labels, rid, data = json.loads(fields[b"j"])
    meta = fields.get(b"bo")
    if meta is not None:
        # A refused reserve: rebuilt exactly as engine.reserve_record writes it.
        _, scope, period, unit, _ = json.loads(meta)
        display: Callable[[int], float] = micros_to_usd if unit == Unit.USD.value else float
        decision = _text(fields[b"d"])
        data = {
            **data,
            "reason": "budget_exceeded",
            "scope": {str(a): str(b) for a, b in scope},
            "period": period,
            "unit": unit,
            "spent": display(int(fields[b"bs"])),
            "limit": display(int(fields[b"bl"])),
        }
    return AuditRecord(
        at=float(at),
        decision=decision,
        labels=labels,
        reservation_id=rid,
        data=data,
        id=int(_text(entry_id).partition("-")[0]),
    )


def _close_on_loop(loop: asyncio.AbstractEventLoop, client: AsyncClient) -> None:
    """Close an async client from sync code, as far as its loop's state allows."""
    if loop.is_closed():
        return  # its sockets can no longer be closed cleanly; call `await store.aclose()` before the loop ends
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        loop.create_task(client.aclose())  # fire and forget: we are inside the loop's own thread
    elif loop.is_running():
        asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=5)
    else:
        loop.run_until_complete(client.aclose())

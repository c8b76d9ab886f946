"""What the Redis store sends and reads: keys, the scripts' arguments, and their replies as engine values.

No I/O here. The hot path (a reserve and a commit on every guarded call) builds each counter's
constant arguments once and reuses them while the counter's limit and expiry stay the same.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from costguard.engine import (
    CommitOutcome,
    CounterOp,
    ReserveOutcome,
    ReservePlan,
    crossings_from,
    fired_name,
    is_lease,
    op_from_json,
    reported,
    settle_deltas,
)
from costguard.events import AuditRecord
from costguard.model import Period, Unit, micros_to_usd
from costguard.stores.base import Control, CounterRow

__all__ = ["Codec", "config_value", "hash_reply", "previous_id", "text"]

_ENCODED_CACHE = 50_000  # counters whose encoded constants are kept
_CACHE_HEAD = struct.Struct(">d")
MAX_SEQ = "18446744073709551615"

Call = tuple[list[str], list[str]]  # a script's KEYS and ARGV


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps with options builds one per call


def _dumps(value: object) -> str:
    return _ENCODER.encode(value)


def _num(value: float | None) -> str:
    return "null" if value is None else repr(value)


def text(value: bytes | str) -> str:
    """A reply value as text."""
    return value.decode() if isinstance(value, bytes) else value


def hash_reply(reply: Any) -> dict[bytes, bytes]:
    """`HGETALL` answered as a dict or a flat list."""
    if isinstance(reply, dict):
        return {k if isinstance(k, bytes) else str(k).encode(): v for k, v in reply.items()}
    items = list(reply or ())
    return dict(zip(items[::2], items[1::2], strict=True))


def config_value(reply: Any) -> str:
    """`CONFIG GET name` answered as a dict (redis-py callbacks) or a flat list."""
    values = list(reply.values()) if isinstance(reply, dict) else list(reply or ())[1::2]
    return text(values[0]).lower() if values else ""


def previous_id(entry_id: str) -> str:
    """The stream id just before `entry_id` (an inclusive range end that works on every Redis version)."""
    ms, _, seq = entry_id.partition("-")
    if int(seq or 0) > 0:
        return f"{ms}-{int(seq) - 1}"
    return f"{int(ms) - 1}-{MAX_SEQ}"


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
    shown: str | None  # its entry of an allowed reserve's `ceilings` without `spent` (None: not reported)

    def fits(self, op: CounterOp) -> bool:
        return (
            self.limit == op.limit
            and self.expires_at == op.expires_at
            and self.levels == op.levels
            and self.hard == op.hard
            and self.previous_key == op.previous_key
            and self.resets_at == op.resets_at
        )


class Codec:
    """Keys of one namespace, script arguments from engine plans, engine values from replies."""

    def __init__(self, namespace: str, maxlen: int) -> None:
        self.prefix = "{" + namespace + "}:"  # one hash tag: every key of a namespace in one slot
        self.stream = self.prefix + "audit"
        self.seq = self.prefix + "audit:seq"
        self.exp = self.prefix + "exp"
        self.ctl = self.prefix + "ctl"
        self.maxlen = str(maxlen)
        self._encoded: dict[str, _Encoded] = {}

    # ----------------------------------------------------------------- keys
    def counter(self, key: str) -> str:
        return self.prefix + "c:" + key

    def index(self, period: str, bucket: str) -> str:
        return f"{self.prefix}i:{period}:{bucket}"

    def reservation(self, reservation_id: str) -> str:
        return self.prefix + "r:" + reservation_id

    def cache(self, key: str) -> bytes:
        return (self.prefix + "k:").encode() + key.encode("utf-8", "surrogatepass")

    def purge_call(self, now: float, members: Sequence[bytes | str]) -> Call:
        """purge.lua's arguments for expiry index members `<period>|<bucket>|<counter key>`."""
        keys = [self.exp]
        for member in members:
            period, bucket, key = text(member).split("|", 2)
            keys += (self.counter(key), self.index(period, bucket))
        return keys, [repr(now), *map(text, members)]

    # ----------------------------------------------------------------- reserve and settle
    def _encode(self, op: CounterOp) -> _Encoded:
        """The cached constant arguments of a counter (built again when its limit or expiry changed)."""
        cached = self._encoded.get(op.key)
        if cached is not None and cached.fits(op):
            return cached
        key = self.counter(op.key)
        index = self.index(op.period.value, op.bucket)
        scope = [list(item) for item in op.scope]
        member = f"{op.period.value}|{op.bucket}|{op.key}"
        meta = _dumps([op.ceiling_id, scope, op.period.value, op.unit.value, op.bucket])
        expires = "" if op.expires_at is None else repr(op.expires_at)
        bucket_expires = "0" if op.period is Period.TOTAL else "1"
        lowest = str(op.levels[0][1]) if op.levels else ""
        levels = " ".join(f"{fired_name(t)} {level} {1 if t >= 1.0 else 0}" for t, level in op.levels)
        head = _dumps([op.key, op.ceiling_id, scope, op.period.value, op.unit.value, op.bucket])[:-1]
        made = _Encoded(
            limit=op.limit,
            hard=op.hard,
            levels=op.levels,
            resets_at=op.resets_at,
            expires_at=op.expires_at,
            previous_key=op.previous_key,
            reserve_keys=(key, key if op.previous_key is None else self.counter(op.previous_key), index),
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
            shown=_dumps(
                {
                    "scope": dict(op.scope),
                    "period": op.period.value,
                    "unit": op.unit.value,
                    "limit": op.display(op.limit),
                }
            )
            if reported(op)
            else None,
        )
        if len(self._encoded) >= _ENCODED_CACHE:
            self._encoded.clear()
        self._encoded[op.key] = made
        return made

    def reserve_call(self, plan: ReservePlan, record: AuditRecord | None) -> Call:
        """reserve.lua's arguments (the ops JSON, `engine.op_to_json` of each counter, is ARGV[4]; last come
        the counters an allowed reserve's record reports, `engine.reported`: their indexes, and their
        `ceilings` entries without `spent`; then the counters with a ttl, as index and seconds)."""
        keys = [self.reservation(plan.reservation_id), self.stream, self.seq, self.exp]
        args = ["1" if plan.force else "0", str(len(plan.counters)), repr(plan.at), "", record_json(record)]
        args.append(self.maxlen)
        ops_json = []
        shown: list[str] = []
        entries: list[str] = []
        ttls: list[str] = []
        for index, op in enumerate(plan.counters, 1):
            encoded = self._encode(op)
            amount = str(op.amount)
            keys += encoded.reserve_keys
            args.append(amount)
            args += encoded.reserve_tail
            args.append(str(op.counts_new + 1))  # a registry counter of max_instances: what it watches
            if op.counts_new < 0:  # a registry is never settled: the reservation doesn't keep it
                ops_json.append(encoded.json_head + amount + encoded.json_tail)
            if encoded.shown is not None:
                shown.append(str(index))
                entries.append(encoded.shown)
            if op.ttl_s is not None:
                ttls += (str(index), repr(op.ttl_s))
        args[3] = "[" + ",".join(ops_json) + "]"
        args.append(" ".join(shown))
        args.append("[" + ",".join(entries) + "]")
        args.append(" ".join(ttls))
        args.append("1" if is_lease(plan.reservation_id) else "0")
        return keys, args

    def start_call(self, op: CounterOp, committed: int, at: float) -> Call:
        """start.lua's arguments: `op`'s counter created with `committed` spent unless it exists."""
        encoded = self._encode(op)
        expires, bucket_expires, member, meta = encoded.reserve_tail[3:7]
        keys = [self.exp, encoded.reserve_keys[0], encoded.reserve_keys[2]]
        return keys, [str(committed), repr(at), expires, bucket_expires, member, meta]

    def settle_call(
        self,
        reservation_id: str,
        ops: Sequence[CounterOp],
        actual: Mapping[Unit, int] | None,
        at: float,
        record: AuditRecord | None,
    ) -> Call:
        """settle.lua's arguments: `engine.settle_deltas` for each counter."""
        keys = [self.reservation(reservation_id), self.stream, self.seq, self.exp]
        args = [str(len(ops)), repr(at), record_json(record), self.maxlen]
        for op, (d_reserved, d_committed) in zip(ops, settle_deltas(ops, actual), strict=True):
            encoded = self._encode(op)
            keys += encoded.settle_keys
            args.append(str(d_reserved))
            args.append(str(d_committed))
            args += encoded.settle_tail
        args.append("1" if is_lease(reservation_id) else "0")
        return keys, args

    def reserve_outcome(self, plan: ReservePlan, reply: Sequence[int]) -> ReserveOutcome:
        if reply[0] == 2:
            return ReserveOutcome(True, ())  # a forced plan already recorded
        n = int(reply[2])
        # An allowed slice's reply has its counters' holders after the totals (none when asked again).
        m = n if reply[0] == 1 and is_lease(plan.reservation_id) else 0
        return ReserveOutcome(
            reply[0] == 1,
            tuple(int(total) for total in reply[3 : 3 + n]),
            int(reply[1]) - 1 if reply[1] else None,
            crossings_from(plan.counters, reply[3 + n + m :]),
            expired=reply[0] == 3,
            holders=tuple(int(count) for count in reply[3 + n : 3 + n + m]),
        )

    def commit_outcome(self, ops: tuple[CounterOp, ...], reply: Sequence[int]) -> CommitOutcome:
        if reply[0] != 1:
            return CommitOutcome(applied=False)
        n = int(reply[1])
        totals = tuple(int(total) for total in reply[2 : 2 + n])
        return CommitOutcome(True, ops, totals, crossings_from(ops, reply[2 + n :]))

    @staticmethod
    def ops_from(raw: bytes | str | None) -> tuple[CounterOp, ...] | None:
        """A reservation's counters from its key: None when unknown or already settled (`1`)."""
        if raw is None or raw in (b"1", "1"):
            return None
        return tuple(op_from_json(item) for item in json.loads(raw))

    def counter_row(
        self, member: bytes | str, committed: Any, reserved: Any, meta: bytes | str, leased: Any = 0, holders: Any = 0
    ) -> CounterRow:
        """A counter read back for status (`meta`: its `m` field; `leased`, `holders`: `l` and `h`, absent in a
        counter written by an earlier version)."""
        ceiling_id, scope, period, unit, bucket = json.loads(meta)
        return CounterRow(
            text(member)[len(self.prefix) + 2 :],
            ceiling_id,
            tuple((str(a), str(b)) for a, b in scope),
            Period(period),
            Unit(unit),
            bucket,
            int(committed or 0),
            int(reserved or 0),
            int(leased or 0),
            int(holders or 0),
        )

    # ----------------------------------------------------------------- control
    def control_call(self, mode: str, field: str, value: object, record: AuditRecord) -> Call:
        return [self.ctl, self.stream, self.seq], [mode, field, _dumps(value), record_json(record), self.maxlen]

    @staticmethod
    def control_from(fields: Mapping[bytes, bytes]) -> Control:
        kinds = {b"k|": "killswitch", b"o|": "override", b"r|": "key"}
        return Control.from_entries(
            (kinds.get(field[:2], ""), json.loads(value)) for field, value in sorted(fields.items())
        )

    # ----------------------------------------------------------------- cache values
    @staticmethod
    def cache_payload(value: bytes, expires_at: float) -> tuple[bytes, int]:
        """The stored value (8-byte expires_at, then the value) and its PX expiry.

        Redis drops the entry on its own clock a minute after it expires on ours: the exact expiry is
        checked on read against the caller's clock, which may be skewed or, in tests, fake.
        """
        px = max(60_000, math.ceil((expires_at - time.time()) * 1000) + 60_000)
        return _CACHE_HEAD.pack(expires_at) + value, px

    @staticmethod
    def cache_value(raw: bytes | None, now: float) -> bytes | None:
        if raw is None or len(raw) < _CACHE_HEAD.size:
            return None
        (expires,) = _CACHE_HEAD.unpack_from(raw)
        return bytes(raw[_CACHE_HEAD.size :]) if expires > now else None


# --------------------------------------------------------------------- audit records
def record_json(record: AuditRecord | None) -> str:
    """One audit record as the scripts store it: `[at, decision, labels, reservation id, data]`."""
    if record is None:
        return ""
    return _dumps([record.at, record.decision, dict(record.labels), record.reservation_id, dict(record.data)])


def record_from(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> AuditRecord:
    """An audit stream entry back as a record; entry `<n>-0` is record n."""
    at, decision, labels, rid, data = json.loads(fields[b"j"])
    meta = fields.get(b"bo")
    if meta is not None:
        # A refused reserve: rebuilt exactly as engine.reserve_record writes it.
        _, scope, period, unit, _ = json.loads(meta)
        display: Callable[[int], float] = micros_to_usd if unit == Unit.USD.value else float
        decision = text(fields[b"d"])
        data = {
            **data,
            "reason": text(fields.get(b"br", b"budget_exceeded")),
            "scope": {str(a): str(b) for a, b in scope},
            "period": period,
            "unit": unit,
            "spent": display(int(fields[b"bs"])),
            "limit": display(int(fields[b"bl"])),
        }
    elif b"ct" in fields:
        # An allowed reserve: its reported counters (`cs`) and their totals after it (`ct`), rebuilt
        # exactly as engine.reserve_record writes them.
        totals = text(fields[b"ct"]).split()
        entries = json.loads(fields[b"cs"])
        data = {**data, "ceilings": [_spent(entry, int(total)) for entry, total in zip(entries, totals, strict=True)]}
    return AuditRecord.from_stored(int(text(entry_id).partition("-")[0]), at, decision, labels, rid, data)


def _spent(entry: Mapping[str, Any], total: int) -> dict[str, Any]:
    """An entry of `ceilings` with its `spent` put back (`engine.CounterOp.display`)."""
    spent = micros_to_usd(total) if entry["unit"] == Unit.USD.value else float(total)
    return {
        "scope": entry["scope"],
        "period": entry["period"],
        "unit": entry["unit"],
        "spent": spent,
        "limit": entry["limit"],
    }

"""The outage spool: what calls cost that the store does not have yet, on local disk until it does.

A guard appends an entry before a call the store has not recorded returns — an admission while the
store was unreachable, a commit that could not be written, a background commit still queued — and
marks entries done once the store has them. Each process writes its own segment files and holds an
exclusive lock on each while it runs. A segment whose lock can be taken belongs to a process that
died (or closed its guard with the store still down); the next guard that opens the same spool
writes its remaining entries and deletes it. Every store write is idempotent by reservation id, so
an entry written twice (a crash between the write and its `done` line) still counts once.

A process that serves calls from leased slices also keeps each slice's write-ahead *mark* here (what
it may have used of it, `costguard.slicemarks`): one outstanding mark per slice, each new one written
with the `done` of the one before in the same write and the same segment, so whoever adopts the
segment of a holder that died finds the slice's last mark and commits the slice at it.

Lines are JSON, read back as data and validated: nothing in a spool is ever executed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from costguard.spoolcodec import Entry, decode, encode

__all__ = ["Entry", "Orphan", "Spool", "decode", "default_spool_dir", "encode"]

log = logging.getLogger("costguard")

SEGMENT_BYTES = 4 * 1024 * 1024  # a segment still being written rolls over past this
_SUFFIX = ".jsonl"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def default_spool_dir(identity: str) -> Path:
    """`$COSTGUARD_SPOOL_DIR`, else a per-user state directory, with one folder per store (keyed by
    its redacted URL and namespace or table prefix, so two stores never share a spool)."""
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    root = os.environ.get("COSTGUARD_SPOOL_DIR")
    if not root:
        from platformdirs import user_state_dir

        root = str(Path(user_state_dir("costguard", appauthor=False)) / "spool")
    return Path(root) / key


# --------------------------------------------------------------------------------------- file locks
def _try_lock(fd: int) -> bool:
    """An exclusive lock on an open file without waiting; released when the fd is closed or the process dies."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class _Segment:
    """One file this process appends to (locked while open)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.size = 0
        self.outstanding = 0


class Orphan:
    """A dead process's segment, locked for this one: write `entries`, then `finish()` deletes it."""

    def __init__(self, path: Path, fd: int, entries: list[Entry]) -> None:
        self.path = path
        self.fd = fd
        self.entries = entries

    def done(self, entries: Sequence[Entry]) -> None:
        """Mark entries written (so a crash now doesn't write them a second time)."""
        if entries:
            os.write(self.fd, (json.dumps({"done": [e.seq for e in entries]}) + "\n").encode())
            written = {e.seq for e in entries}
            self.entries = [e for e in self.entries if e.seq not in written]

    def finish(self) -> None:
        """Delete the segment when nothing is left in it, and let go of it either way."""
        try:
            if not self.entries:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)


class Spool:
    """This process's segments in `directory`, plus the orphans it finds there."""

    def __init__(self, directory: str | os.PathLike[str], *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._seq = 0
        self._current: _Segment | None = None
        self._where: dict[int, _Segment] = {}
        self._mine: set[Path] = set()
        host = _UNSAFE.sub("_", socket.gethostname())[:40] or "host"
        self._stem = f"{host}-{os.getpid()}-{secrets.token_hex(4)}"
        self._count = 0

    def __repr__(self) -> str:
        return f"Spool({str(self.directory)!r}, {len(self._where)} outstanding)"

    def next_seq(self) -> int:
        """A sequence number for a new entry."""
        with self._lock:
            self._seq += 1
            return self._seq

    @property
    def outstanding(self) -> int:
        """Entries of this process not yet marked done."""
        return len(self._where)

    def _open_segment(self) -> _Segment:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._count += 1
        path = self.directory / f"{self._stem}-{self._count}{_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags, 0o600)
        if not _try_lock(fd):  # pragma: no cover - the name is random and new
            os.close(fd)
            raise OSError(f"spool segment {path} is locked by another process")
        self._mine.add(path)
        return _Segment(path, fd)

    def append(self, entries: Sequence[Entry]) -> None:
        """Write entries (one `write`; no fsync: a process kill is the failure this survives, and the
        kernel keeps what was written). Raises `OSError` when the disk refuses."""
        if not entries:
            return
        data = "".join(encode(entry) for entry in entries).encode()
        with self._lock:
            segment = self._current
            if segment is None or segment.size >= self.segment_bytes:
                segment = self._current = self._open_segment()
            os.write(segment.fd, data)
            segment.size += len(data)
            segment.outstanding += len(entries)
            for entry in entries:
                self._where[entry.seq] = segment

    def replace(self, entry: Entry, previous: Entry | None) -> None:
        """Append `entry` and mark `previous` done in one write, in the segment that holds `previous` (a
        slice's marks stay together, so one adopter sees its last). Raises `OSError` when the disk refuses."""
        data = encode(entry).encode()
        before = -1 if previous is None else previous.seq
        with self._lock:
            segment = self._where.get(before)
            if segment is not None:
                data += b'{"done": [%d]}\n' % before
                os.write(segment.fd, data)
                del self._where[before]
            else:
                segment = self._current
                if segment is None or segment.size >= self.segment_bytes:
                    segment = self._current = self._open_segment()
                os.write(segment.fd, data)
                segment.outstanding += 1
            segment.size += len(data)
            self._where[entry.seq] = segment

    def done(self, entries: Sequence[Entry]) -> None:
        """Mark entries written to the store; a segment with nothing outstanding is emptied or deleted."""
        with self._lock:
            by_segment: dict[_Segment, list[int]] = {}
            for entry in entries:
                segment = self._where.pop(entry.seq, None)
                if segment is not None:
                    by_segment.setdefault(segment, []).append(entry.seq)
            for segment, seqs in by_segment.items():
                segment.outstanding -= len(seqs)
                if segment.outstanding > 0:
                    line = (json.dumps({"done": seqs}) + "\n").encode()
                    os.write(segment.fd, line)
                    segment.size += len(line)
                elif segment is self._current:
                    os.ftruncate(segment.fd, 0)  # O_APPEND: the next write starts the file again
                    segment.size = 0
                else:
                    self._drop(segment)

    def _drop(self, segment: _Segment) -> None:
        segment.path.unlink(missing_ok=True)
        os.close(segment.fd)
        self._mine.discard(segment.path)

    def orphans(self) -> Iterator[Orphan]:
        """Segments of other processes whose lock could be taken (their writer is gone), with the
        entries not marked done. An unreadable line is logged and skipped."""
        try:
            paths = sorted(self.directory.glob(f"*{_SUFFIX}"))
        except OSError:
            return
        for path in paths:
            if path in self._mine:
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | getattr(os, "O_BINARY", 0))
            except OSError:
                continue  # deleted by another adopter meanwhile
            if not _try_lock(fd):
                os.close(fd)
                continue  # its process is alive
            try:
                entries = _read_segment(fd, path)
            except OSError as exc:
                os.close(fd)
                log.warning("costguard: spool segment %s could not be read: %s", path, exc)
                continue
            if not path.exists():  # another process finished it between our open and our lock
                os.close(fd)
                continue
            yield Orphan(path, fd, entries)

    def close(self) -> None:
        """Let go of this process's segments: empty ones are deleted, the rest stay for the next process."""
        with self._lock:
            segments = {*self._where.values()}
            if self._current is not None:
                segments.add(self._current)
            for segment in segments:
                if segment.outstanding <= 0:
                    self._drop(segment)
                else:
                    os.close(segment.fd)
                    self._mine.discard(segment.path)
            self._where.clear()
            self._current = None


def _read_segment(fd: int, path: Path) -> list[Entry]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    entries: dict[int, Entry] = {}
    done: set[int] = set()
    for number, raw in enumerate(b"".join(chunks).decode("utf-8", "replace").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
            if isinstance(data, dict) and set(data) == {"done"} and isinstance(data["done"], list):
                done.update(seq for seq in data["done"] if isinstance(seq, int))
                continue
            entry = decode(raw)
        except ValueError as exc:  # a line cut short by a kill mid-write, or not ours
            log.warning("costguard: spool %s line %d skipped: %s", path.name, number, exc)
            continue
        entries[entry.seq] = entry
    left = [entry for seq, entry in entries.items() if seq not in done]
    # A slice's mark gives way to a later entry of the same slice: its next mark, or what it really cost.
    last = {entry.reservation_id: entry.seq for entry in left}
    return [entry for entry in left if not entry.mark or last[entry.reservation_id] == entry.seq]

"""Server-sent events split as they arrive, each passed on whole with its `data` parsed for metering."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["EventSplitter"]

_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_MAX_EVENT = 4 * 1024 * 1024  # an event larger than this is passed on unparsed


class EventSplitter:
    """Feed bytes; get every complete event (its bytes, its JSON data or None) as soon as it ends."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> Iterator[tuple[bytes, Any]]:
        """The events completed by `chunk`, in order."""
        self._buffer += chunk
        start = 0
        for match in _END.finditer(self._buffer):
            event = self._buffer[start : match.end()]
            start = match.end()
            yield event, _data(event)
        self._buffer = self._buffer[start:]
        if len(self._buffer) > _MAX_EVENT:
            event, self._buffer = self._buffer, b""
            yield event, None

    def rest(self) -> bytes:
        """Bytes after the last complete event (a stream cut mid-event)."""
        rest, self._buffer = self._buffer, b""
        return rest


def _data(event: bytes) -> Any:
    lines = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    payload = b"\n".join(lines)
    if payload.strip() == b"[DONE]":
        return None
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

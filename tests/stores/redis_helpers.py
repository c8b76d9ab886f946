"""Test helpers for the Redis store: a client wrapper that records every command it sends."""

from __future__ import annotations

from typing import Any

from costguard.stores.redis import RedisStore


def _name(arg: object) -> str:
    return (arg.decode() if isinstance(arg, bytes) else str(arg)).upper()


PIPELINE = "<PIPELINE>"


class RecordingPipeline:
    """Logs a pipeline as one entry, `(PIPELINE, command names…)`, when it is sent."""

    def __init__(self, inner: Any, log: list[tuple[Any, ...]]) -> None:
        self.inner = inner
        self.log = log
        self.queued: list[str] = []

    def execute_command(self, *args: Any) -> Any:
        self.queued.append(_name(args[0]))
        return self.inner.execute_command(*args)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.log.append((PIPELINE, *self.queued))
        return list(self.inner.execute(raise_on_error=raise_on_error))


class Recording:
    """Wraps a redis-py (or fakeredis) client; `log` holds one entry per round trip."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.log: list[tuple[Any, ...]] = []

    @property
    def commands(self) -> list[str]:
        """The command name of each round trip (`<PIPELINE>` for a pipeline)."""
        return [_name(args[0]) if args[0] != PIPELINE else PIPELINE for args in self.log]

    def evalsha_keys(self) -> list[str]:
        """Every key declared to every EVALSHA so far."""
        keys: list[str] = []
        for args in self.log:
            if _name(args[0]) == "EVALSHA":
                count = int(args[2])
                keys += [str(key) for key in args[3 : 3 + count]]
        return keys

    def clear(self) -> None:
        self.log.clear()

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.log.append(args)
        return self.inner.execute_command(*args, **options)

    def pipeline(self, transaction: bool = True) -> RecordingPipeline:
        return RecordingPipeline(self.inner.pipeline(transaction=transaction), self.log)

    def close(self) -> None:
        self.inner.close()


class AsyncRecording:
    """`Recording` for an asyncio client."""

    def __init__(self, inner: Any, log: list[tuple[Any, ...]]) -> None:
        self.inner = inner
        self.log = log

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.log.append(args)
        return await self.inner.execute_command(*args, **options)

    async def aclose(self) -> None:
        await self.inner.aclose()


def record_commands(store: RedisStore) -> Recording:
    """Route the store's sync and async commands through a recorder (sharing one log)."""
    recording = Recording(store._client())
    store._client_obj = recording
    factory = store._async_factory
    store._async_factory = lambda: AsyncRecording(factory(), recording.log)
    store._async.clear()
    return recording

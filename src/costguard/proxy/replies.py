"""What the proxy answers on its own (refusals, errors), as the vendors' SDKs read them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from costguard._web import Reply, blocked_reply
from costguard.errors import Blocked

__all__ = ["Send", "blocked", "invalid_key", "presented_key", "refusal", "send_reply"]

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def refusal(status: int, code: str, message: str) -> Reply:
    """A refusal of the proxy's own: `{"code", "message"}`."""
    return Reply(status, {"code": code, "message": message}, ())


async def send_reply(send: Send, reply: Reply) -> None:
    content = reply.content
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in reply.headers]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def invalid_key(problem: str) -> Reply:
    """The 401 for a missing, unknown, revoked or expired run key."""
    message = {
        "missing": "no run key: send it as the API key (Authorization: Bearer … or x-api-key)",
        "unknown": "unknown run key",
        "revoked": "this run key was revoked",
        "expired": "this run key has expired",
    }[problem]
    body = {
        "code": "invalid_key",
        "reason": problem,
        "message": message,
        "error": {"type": "invalid_key", "message": message},
    }
    return Reply(401, body, ())


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The run key the agent sent as its API key (`Authorization: Bearer …` or `x-api-key`)."""
    auth = headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key")


def blocked(exc: Blocked) -> Reply:
    """429 `cap_exhausted` or 503 for a kill switch, as the web integrations answer it, for SDKs."""
    reply = blocked_reply(exc)
    body = dict(reply.body)
    if reply.status == 429:
        body["retry_after"] = exc.retry_after_s
        body["error"] = {"type": "cap_exhausted", "code": "cap_exhausted", "message": str(exc)}
    # The vendors' SDKs retry a 429 unless told not to; a cap doesn't come back in a second.
    return Reply(reply.status, body, (*reply.headers, ("x-should-retry", "false")))

"""The proxy as a plain ASGI app: run key → reservation → forward → settle.

Stateless: every decision is in the shared store (keys and caps in its control state, spend in its
counters), so any number of proxies behind a load balancer share one cap exactly. Streams are passed
through event by event as they arrive; the usage at their end is committed, and a stream the client
abandons is settled from what was streamed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

from costguard._config.proxy import ProxyConfig, UpstreamConfig
from costguard._web import Reply, header_text
from costguard.errors import Blocked, LabelError
from costguard.events import AuditRecord
from costguard.guard import Guard
from costguard.integrations._streams import Meter
from costguard.proxy.pricing import BadRequest, Estimate, actual_cost, endpoint_for, prepare
from costguard.proxy.replies import Send, blocked, invalid_key, presented_key, refusal, send_reply
from costguard.proxy.requests import MAX_BODY, header_key, hop_by_hop, path_problem, read_body
from costguard.proxy.sse import EventSplitter
from costguard.proxy.upstream import UpstreamClient, UpstreamPool, UpstreamResponse
from costguard.reservation import Reservation
from costguard.runkeys import KeyIndex
from costguard.steps import arun
from costguard.stores.base import RunKeyState

__all__ = ["ProxyApp"]

log = logging.getLogger("costguard.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

# Request headers never forwarded besides the hop-by-hop ones: the agent's key (the proxy puts the vendor's
# in), what the upstream client sets itself, and which account the vendor key bills.
_DROP_REQUEST = frozenset(
    {
        "host",
        "authorization",
        "x-api-key",
        "content-length",
        "accept-encoding",
        "cookie",
        # Which organization or project the proxy's vendor key bills is the proxy's choice (`headers:`).
        "openai-organization",
        "openai-project",
    }
)
_PARSE_INLINE = 64 * 1024  # bodies past this are parsed and priced in a worker thread
# Answer headers never passed on besides the hop-by-hop ones: what uvicorn sets itself, the vendor
# account behind the proxy's key (an agent holds a run key, not the account), and the vendor's cookies
# (the agent's are never sent, so none of them is the agent's).
_DROP_RESPONSE = frozenset(
    {
        "content-length",
        "content-encoding",
        "openai-organization",
        "openai-project",
        "anthropic-organization-id",
        "set-cookie",
    }
)


class ProxyApp:
    """`costguard proxy`'s ASGI app over a guard and the config's `proxy:` section."""

    def __init__(self, guard: Guard, config: ProxyConfig, *, transport: UpstreamPool | None = None) -> None:
        self.guard = guard
        self.upstreams: dict[str, UpstreamConfig] = dict(config.upstreams)
        self._keys = KeyIndex()
        self._transport = transport
        self._client: UpstreamClient | None = None
        self._settling: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"ProxyApp(upstreams={sorted(self.upstreams)!r})"

    def _http(self) -> UpstreamClient:
        if self._client is None:
            self._client = UpstreamClient(self._transport, max_connections=1000)
        return self._client

    def _settle_later(self, settle: Awaitable[None]) -> None:
        """Settle a reservation once the answer is sent, off the request: the agent (and the next request on
        its connection) doesn't wait for the store's write. Until it is written the estimate stays reserved:
        never under-counted."""

        async def run() -> None:
            try:
                await settle
            except Exception:  # the guard reports store errors itself; never an unhandled task error
                log.exception("costguard proxy: settling a reservation failed")

        task = asyncio.ensure_future(run())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def drain(self) -> None:
        """Wait for every reservation still being settled (at shutdown)."""
        while self._settling:
            await asyncio.gather(*list(self._settling), return_exceptions=True)

    async def aclose(self) -> None:
        """Settle what is pending and close the upstream connections."""
        await self.drain()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/health":
            await send_reply(send, Reply(200, {"status": "ok"}, ()))
            return
        name, _, rest = path.lstrip("/").partition("/")
        upstream = self.upstreams.get(name)
        if upstream is None:
            await send_reply(send, refusal(404, "unknown_upstream", f"no upstream {name!r}"))
            return
        problem = path_problem(upstream, rest)
        if problem is not None:
            await send_reply(send, refusal(400, "bad_path", problem))
            return
        if upstream.kind != "generic" and (scope["method"] != "POST" or endpoint_for(upstream, rest) is None):
            # Only what the proxy can price goes out with the vendor key: not batches, files, fine-tuning…
            supported = "v1/chat/completions, v1/responses" if upstream.kind == "openai" else "v1/messages"
            await send_reply(send, refusal(404, "unsupported_path", f"this proxy forwards POST {supported} only"))
            return
        await self._proxy(scope, receive, send, name, upstream, rest)

    def _audit_refusal(
        self, key: RunKeyState, reason: str, name: str, upstream: UpstreamConfig, rest: str, now: float
    ) -> None:
        labels = {**dict(key.labels), "vendor": name}
        labels.setdefault("feature", upstream.feature or name)
        data = {"reason": reason, "key_id": key.id, "upstream": name, "path": rest}
        self.guard.append_audit(AuditRecord(now, "blocked", labels, data=data))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, name: str, upstream: UpstreamConfig, rest: str
    ) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            value = header_text(raw_value)
            if value is not None:
                headers[raw_name.decode("latin-1").lower()] = value
        now = self.guard.clock()
        state = await arun(self.guard.control.refresh(now))
        check = self._keys.check(state.control, presented_key(headers), now)
        if check.state is None:
            assert check.problem is not None
            if check.refused is not None:  # a real key, revoked or expired: its run's log says it was tried
                self._audit_refusal(check.refused, f"key_{check.problem}", name, upstream, rest, now)
            await send_reply(send, invalid_key(check.problem))
            return
        key = check.state

        async def refuse(status: int, code: str, message: str) -> None:
            """Refused before any reservation: answered, and in the key's run's audit log."""
            self._audit_refusal(key, code, name, upstream, rest, now)
            await send_reply(send, refusal(status, code, message))

        if key.upstreams and name not in key.upstreams:
            message = f"this run key may not use {name!r}: it may use {', '.join(key.upstreams)}"
            unknown = [u for u in key.upstreams if u not in self.upstreams]
            if unknown:  # issued where the config had no `proxy:` section, or with another one
                message += f"; this proxy has no upstream {', '.join(map(repr, unknown))}"
            await refuse(403, "upstream_not_allowed", message)
            return
        raw = await read_body(receive)
        if raw is None:
            await refuse(413, "body_too_large", f"over {MAX_BODY} bytes")
            return
        content_type = headers.get("content-type", "")
        pricing = self.guard.pricing
        try:
            if len(raw) > _PARSE_INLINE:  # parsing and counting a large prompt would stall every other request
                ready = await asyncio.to_thread(prepare, upstream, rest, raw, content_type, pricing)
            else:
                ready = prepare(upstream, rest, raw, content_type, pricing)
        except BadRequest as exc:
            await refuse(400, exc.code, str(exc))
            return
        est = ready.estimate
        labels = dict(key.labels)
        bound_model = labels.get("model")
        if bound_model is not None and est.endpoint is not None and est.model != bound_model:
            # A key bound to a model is a cap on that model: another one would be charged to no ceiling of it.
            await refuse(403, "model_not_allowed", f"this run key may only use model {bound_model!r}")
            return
        feature = labels.pop("feature", None) or upstream.feature or name
        labels.setdefault("vendor", name)
        if est.model is not None:
            labels.setdefault("model", est.model)
        try:
            reservation = await self.guard.areserve(feature, estimate_usd=est.usd, estimate_tokens=est.tokens, **labels)
        except Blocked as exc:  # audited by the guard, with the ceiling that refused it
            await send_reply(send, blocked(exc))
            return
        except LabelError as exc:
            await refuse(400, "bad_label", str(exc))
            return
        except ValueError as exc:  # an estimate the guard can't take (e.g. an absurd max_tokens)
            await refuse(400, "bad_request", str(exc))
            return
        raw, hide_usage, streamed = ready.raw, ready.hide_usage, ready.streamed
        handed = [False]  # set once the reservation's settling is scheduled (commit, or release)
        try:
            await self._forward(
                scope, receive, send, upstream, rest, headers, raw, reservation, est, hide_usage, streamed, handed
            )
        except BaseException:
            if not handed[0]:  # broke before the answer was settled (the client left, a bug): give it back
                self._settle_later(reservation.arelease("proxy_error"))
            raise

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        upstream: UpstreamConfig,
        rest: str,
        headers: dict[str, str],
        raw: bytes,
        reservation: Reservation,
        est: Estimate,
        hide_usage: bool,
        streamed: bool,
        handed: list[bool],
    ) -> None:
        auth = upstream.auth_header()
        fixed = [(k.lower().encode("latin-1"), v.get_secret_value().encode()) for k, v in upstream.headers.items()]
        if auth is not None:
            fixed.append(auth)
        skip = _DROP_REQUEST | hop_by_hop(scope["headers"]) | {header_key(k) for k, _ in fixed}
        out: list[tuple[bytes, bytes]] = []
        for raw_name, raw_value in scope["headers"]:  # the bytes the agent sent (UTF-8 values included)
            name = raw_name.decode("latin-1").lower()
            plain = header_key(name)
            if name in headers and plain not in skip and not plain.startswith("x-costguard"):
                out.append((name.encode("latin-1"), raw_value))
        out.append((b"accept-encoding", b"identity"))
        out += fixed
        url = upstream.url.rstrip("/") + "/" + rest
        query = scope.get("query_string", b"")
        if query:
            url += "?" + query.decode("latin-1")
        client = self._http()
        try:
            request = client.build_request(
                scope["method"], url, headers=out, content=raw, timeout=httpx.Timeout(upstream.timeout_s, connect=10.0)
            )
        except (UnicodeEncodeError, httpx.InvalidURL) as exc:  # a header or query no HTTP request can carry
            handed[0] = True
            await reservation.arelease("bad_request")
            refused = {"code": "bad_request", "message": f"the request can't be forwarded ({type(exc).__name__})"}
            await send_reply(send, Reply(400, refused, ()))
            return
        try:
            response = await client.send(request)
        except httpx.HTTPError as exc:
            handed[0] = True
            if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                await reservation.arelease("upstream_error")  # never reached it: nothing to pay
            else:
                await reservation.acommit()  # sent, no answer: it may have run — the estimate stands
            log.warning("costguard proxy: upstream %s did not answer: %s", upstream.url, type(exc).__name__)
            body = {"code": "upstream_unreachable", "message": f"the upstream did not answer ({type(exc).__name__})"}
            await send_reply(send, Reply(502, body, ()))
            return
        try:
            dropped = _DROP_RESPONSE | hop_by_hop(response.headers.raw)
            kept = [  # the bytes the upstream sent (a decoded value may not encode back)
                (k.lower(), v) for k, v in response.headers.raw if header_key(k) not in dropped
            ]
            is_stream = response.headers.get("content-type", "").startswith("text/event-stream")
            if response.status_code >= 400 or not (streamed and is_stream):
                content = await response.aread()
                kept.append((b"content-length", str(len(content)).encode()))
                try:
                    await send({"type": "http.response.start", "status": response.status_code, "headers": kept})
                    await send({"type": "http.response.body", "body": content})
                finally:
                    handed[0] = True
                    if response.status_code >= 400:
                        self._settle_later(reservation.arelease("upstream_error"))  # failed before usage
                    else:
                        usd, tokens = actual_cost(est, content, self.guard.pricing)
                        self._settle_later(reservation.acommit(usd, tokens=tokens))
                return
            assert est.endpoint is not None
            meter = Meter(
                reservation,
                self.guard.pricing,
                est.endpoint.provider,
                est.max_output_tokens,
                hide_usage_chunk=hide_usage,
            )
            await send({"type": "http.response.start", "status": response.status_code, "headers": kept})
            handed[0] = True  # _pump settles the stream however it ends
            await _pump(response, receive, send, meter, self._settle_later)
        finally:
            await response.aclose()


async def _pump(
    response: UpstreamResponse, receive: Receive, send: Send, meter: Meter, later: Callable[[Awaitable[None]], None]
) -> None:
    """Pass a stream on event by event while metering it; settle it when it ends or the client leaves."""
    splitter = EventSplitter()

    async def copy() -> None:
        async for chunk in response.aiter_raw():
            out = []
            for event, data in splitter.feed(chunk):
                if data is not None and not meter.see(data):
                    continue  # the usage chunk the proxy asked for and the agent didn't
                out.append(event)
            if out:
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
        tail = splitter.rest()
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def left() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    copying = asyncio.ensure_future(copy())
    watching = asyncio.ensure_future(left())
    try:
        await asyncio.wait({copying, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (copying, watching):
            if not task.done():
                task.cancel()
        await asyncio.gather(copying, watching, return_exceptions=True)
        # Read to its end: the usage it reported; cut (by the client or the upstream): input plus the
        # request's whole output cap, or the estimate when nothing was reported.
        later(meter.asettle())
    if copying.done() and not copying.cancelled() and copying.exception() is not None:
        log.warning("costguard proxy: stream from upstream broke: %s", type(copying.exception()).__name__)

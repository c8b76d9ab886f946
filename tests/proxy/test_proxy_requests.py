"""What a proxied request may be: bounded before it is priced, unambiguous, bound to its key's model, and
sent on with only the headers that are the agent's to send."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from proxy_helpers import VENDOR_KEY, proxy_stack, serve, spent

from costguard.config import parse_config
from costguard.errors import ConfigError
from costguard.proxy import ProxyApp
from costguard.runkeys import RunKeys

MESSAGES = [{"role": "user", "content": "Where is my order?"}]


def _post(url: str, key: str, path: str, body: Any, **headers: str) -> httpx.Response:
    sent = {"authorization": f"Bearer {key}", **headers}
    if isinstance(body, (bytes, str)):
        sent.setdefault("content-type", "application/json")
        return httpx.post(f"{url}{path}", content=body, headers=sent)
    return httpx.post(f"{url}{path}", json=body, headers=sent)


def test_a_request_without_an_output_cap_gets_the_upstreams_so_the_cap_holds() -> None:
    """Without a cap the model may write on to its limit: the reservation would bound nothing, and a few
    concurrent calls could spend past the key's cap. The proxy adds the upstream's `max_output_tokens`."""
    options = {"openai": {"max_output_tokens": 20}, "anthropic": {"max_output_tokens": 20}}
    with proxy_stack(upstream_options=options) as (guard, url, fake):
        key = RunKeys(guard).issue({"run": "r-cap"}, {"total_usd": 0.05}).key
        wants = {"x-fake-output-tokens": "40"}  # the fake would write 40 tokens ($0.04) if let
        body = {"model": "gpt-4o-mini", "messages": MESSAGES}
        for _ in range(2):
            answer = _post(url, key, "/openai/v1/chat/completions", body, **wants)
            assert answer.status_code == 200, answer.text
            assert fake.requests[-1]["body"]["max_completion_tokens"] == 20
            assert answer.json()["usage"]["completion_tokens"] == 20
        refused = _post(url, key, "/openai/v1/chat/completions", body, **wants)
        assert refused.status_code == 429  # $0.04 spent, $0.02 more can't fit under $0.05
        assert spent(guard, run="r-cap") == pytest.approx(0.04)
        # A cap the agent gave is kept as it is; the Responses API and Anthropic get theirs too.
        _post(url, key, "/openai/v1/chat/completions", {**body, "max_tokens": 3})
        assert "max_completion_tokens" not in fake.requests[-1]["body"]
        anthropic = _post(
            url, key, "/anthropic/v1/messages", {"model": "claude-3-5-haiku-latest", "messages": MESSAGES}
        )
        assert anthropic.status_code == 429  # $0.02 reserved for its 20 tokens: over what is left


def test_a_stream_without_a_cap_is_bounded_and_asked_for_its_usage() -> None:
    with proxy_stack(upstream_options={"openai": {"max_output_tokens": 6}}) as (guard, url, fake):
        key = RunKeys(guard).issue({"run": "r-s"}, {"total_usd": 1}).key
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
        with httpx.stream(
            "POST", f"{url}/openai/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        ) as answer:
            text = "".join(answer.iter_text())
        sent = fake.requests[-1]["body"]
        assert sent["max_completion_tokens"] == 6 and sent["stream_options"] == {"include_usage": True}
        assert '"usage": {' not in text.replace('"usage": null', "")  # the usage chunk is the proxy's
        assert spent(guard, run="r-s") == pytest.approx(0.006)


def test_no_cap_added_when_the_upstream_says_so() -> None:
    with proxy_stack(upstream_options={"openai": {"max_output_tokens": None, "estimate_usd": 0.5}}) as (g, url, fake):
        key = RunKeys(g).issue({"run": "r-n"}, {"total_usd": 1}).key
        answer = _post(url, key, "/openai/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES})
        assert answer.status_code == 200
        assert "max_completion_tokens" not in fake.requests[-1]["body"]


def test_a_model_costguard_cannot_price_is_refused_unless_the_upstream_has_a_flat_price() -> None:
    body = {"model": "my-own-llama", "messages": MESSAGES, "max_tokens": 10}
    with proxy_stack() as (guard, url, fake):
        key = RunKeys(guard).issue({"run": "r-u"}, {"total_usd": 1}).key
        refused = _post(url, key, "/openai/v1/chat/completions", body)
        assert refused.status_code == 400 and refused.json()["code"] == "unpriced_model"
        assert "pricing.models" in refused.json()["message"] and "my-own-llama" in refused.json()["message"]
        assert fake.requests == []
        assert guard.audit(decision="reserve") == []
    with proxy_stack(upstream_options={"openai": {"estimate_usd": 0.25}}) as (guard, url, fake):
        key = RunKeys(guard).issue({"run": "r-u"}, {"total_usd": 1}).key
        assert _post(url, key, "/openai/v1/chat/completions", body).status_code == 200
        assert spent(guard, run="r-u") == pytest.approx(0.25)  # its usage can't be priced: the flat price stands


def test_a_body_that_names_a_key_twice_is_refused() -> None:
    """`{"max_tokens": 1, "max_tokens": 100000}`: the proxy would price one and the vendor might read the
    other. Likewise a form amount given twice."""
    with proxy_stack() as (guard, url, fake):
        key = RunKeys(guard).issue({"run": "r-d"}, {"total_usd": 1}).key
        twice = '{"model": "gpt-4o-mini", "messages": [], "max_tokens": 1, "max_tokens": 100000}'
        refused = _post(url, key, "/openai/v1/chat/completions", twice)
        assert refused.status_code == 400 and "'max_tokens' twice" in refused.json()["message"]
        nested = '{"model": "gpt-4o-mini", "messages": [], "max_tokens": 1, "stream_options": {"a": 1, "a": 2}}'
        assert _post(url, key, "/openai/v1/chat/completions", nested).status_code == 400
        form = "amount=1&amount=900000"
        refused = _post(url, key, "/stripe/v1/charges", form, **{"content-type": "application/x-www-form-urlencoded"})
        assert refused.status_code == 400 and "given 2 times" in refused.json()["message"]
        assert fake.requests == []


def test_a_key_bound_to_a_model_may_use_only_that_model() -> None:
    with proxy_stack() as (guard, url, fake):
        key = RunKeys(guard).issue({"run": "r-m", "model": "gpt-4o-mini"}, {"total_usd": 1}).key
        body = {"model": "gpt-4o-mini-2024-07-18", "messages": MESSAGES, "max_tokens": 10}
        refused = _post(url, key, "/openai/v1/chat/completions", body)
        assert refused.status_code == 403 and refused.json()["code"] == "model_not_allowed"
        assert fake.requests == []
        allowed = _post(url, key, "/openai/v1/chat/completions", {**body, "model": "gpt-4o-mini"})
        assert allowed.status_code == 200


def test_headers_for_this_hop_or_the_vendor_account_are_not_the_agents_to_send() -> None:
    options = {"openai": {"headers": {"OpenAI-Organization": "org-proxy"}}}
    with proxy_stack(upstream_options=options) as (guard, url, fake):
        key = RunKeys(guard).issue({"run": "r-h"}, {"total_usd": 1}).key
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 10}
        headers = {
            "connection": "keep-alive, x-hop-secret",
            "x-hop-secret": "for the proxy only",
            "openai-organization": "org-agent",
            "openai-project": "proj-agent",
            "x-trace": "kept",
        }
        assert _post(url, key, "/openai/v1/chat/completions", body, **headers).status_code == 200
        sent = {k.lower(): v for k, v in fake.requests[-1]["headers"].items()}
        assert "x-hop-secret" not in sent and "openai-project" not in sent
        assert sent["openai-organization"] == "org-proxy" and sent["x-trace"] == "kept"
        assert sent["authorization"] == f"Bearer {VENDOR_KEY}"


def test_the_vendor_account_and_key_are_the_proxys_however_the_agent_spells_them() -> None:
    """Servers behind a vendor's edge may read `_` as `-` (CGI, WSGI's environ): `OpenAI_Organization` would
    choose the account the proxy's key bills, as `OpenAI-Organization` would."""
    options = {"openai": {"headers": {"OpenAI-Organization": "org-proxy"}}}
    with proxy_stack(upstream_options=options) as (guard, url, fake):
        key = RunKeys(guard).issue({"run": "r-u"}, {"total_usd": 1}).key
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 10}
        spelled = {"OpenAI_Organization": "org-agent", "OpenAI_Project": "proj-agent", "X_Api_Key": key}
        assert _post(url, key, "/openai/v1/chat/completions", body, **spelled).status_code == 200
        sent = {k.lower().replace("_", "-"): v for k, v in fake.requests[-1]["headers"].items()}
        assert "openai-project" not in sent and "x-api-key" not in sent
        assert sent["openai-organization"] == "org-proxy" and sent["authorization"] == f"Bearer {VENDOR_KEY}"
        assert all(s not in json.dumps(fake.requests[-1]["headers"]) for s in (key, "org-agent", "proj-agent"))


@pytest.mark.parametrize(
    ("auth", "header", "value"),
    [
        ("basic", "authorization", "Basic " + base64.b64encode(b"AC123:tok-456").decode()),  # Twilio
        ("header:X-Key", "x-key", "AC123:tok-456"),
        (None, "authorization", "Bearer AC123:tok-456"),
    ],
)
def test_a_generic_upstream_sends_its_key_as_configured(auth: str | None, header: str, value: str) -> None:
    options = {"twilio": {"api_key": "AC123:tok-456", "auth": auth}}
    with proxy_stack(upstream_options=options) as (guard, url, fake):
        key = RunKeys(guard).issue({"run": "r-a"}, {"total_usd": 1}).key
        spoofed = {"x-key": "agent's own"}
        _post(url, key, "/twilio/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}, **spoofed)
        sent = {k.lower(): v for k, v in fake.requests[-1]["headers"].items()}
        assert sent[header] == value
        assert key not in json.dumps(sent)
        if header == "x-key":
            assert "authorization" not in sent


def test_an_upstream_answers_hop_by_hop_headers_the_agent_never_sees() -> None:
    async def vendor(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        body = json.dumps({"model": "gpt-4o-mini", "usage": usage}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"connection", b"keep-alive, x-upstream-hop"),
            (b"x-upstream-hop", b"1"),
            (b"x-request-id", b"req-1"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    with serve(vendor) as vendor_url:
        upstream = {"kind": "openai", "url": vendor_url, "api_key": "k"}
        config = parse_config({"store": "memory://", "spool_dir": False, "proxy": {"upstreams": {"openai": upstream}}})
        guard = config.build()
        key = RunKeys(guard).issue({"run": "r-x"}, {"total_usd": 1}).key
        try:
            with serve(ProxyApp(guard, config.proxy)) as url:
                body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 1}
                answer = _post(url, key, "/openai/v1/chat/completions", body)
        finally:
            guard.close()
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "req-1"
    assert "x-upstream-hop" not in answer.headers


def _recording_vendor(answer_headers: list[tuple[bytes, bytes]], received: list[list[tuple[bytes, bytes]]]) -> Any:
    """An OpenAI-like upstream that keeps the headers of each request (every line, as sent) and answers
    with `answer_headers`."""

    async def vendor(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        received.append(list(scope["headers"]))
        while (await receive()).get("more_body"):
            pass
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        body = json.dumps({"model": "gpt-4o-mini", "usage": usage}).encode()
        headers = [(b"content-type", b"application/json"), *answer_headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return vendor


def _through_proxy(vendor: Any, headers: list[tuple[str, str]]) -> tuple[httpx.Response, str]:
    """One chat completion through a proxy in front of `vendor`, sent with `headers` (every line, in order)
    besides the run key; the answer and the key."""
    with serve(vendor) as vendor_url:
        upstream = {"kind": "openai", "url": vendor_url, "api_key": VENDOR_KEY}
        config = parse_config({"store": "memory://", "spool_dir": False, "proxy": {"upstreams": {"openai": upstream}}})
        guard = config.build()
        key = RunKeys(guard).issue({"run": "r-hop"}, {"total_usd": 1}).key
        try:
            with serve(ProxyApp(guard, config.proxy)) as url:
                body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 1})
                sent = [("authorization", f"Bearer {key}"), ("content-type", "application/json"), *headers]
                answer = httpx.post(f"{url}/openai/v1/chat/completions", content=body, headers=sent)
        finally:
            guard.close()
    return answer, key


def test_no_hop_by_hop_header_is_forwarded_to_the_upstream() -> None:
    """RFC 9110 §7.6.1's hop-by-hop headers, and every header any `Connection` line names (not only the
    last line's), are for the agent's hop only; so are the agent's keys."""
    received: list[list[tuple[bytes, bytes]]] = []
    hop = [
        ("connection", "keep-alive, x-first"),
        ("connection", "x-second"),
        ("x-first", "1"),
        ("x-second", "2"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
        ("proxy-authorization", "Basic cHJveHk6cHc="),
        ("proxy-authenticate", "Basic"),
        ("x-trace", "kept"),
    ]
    answer, key = _through_proxy(_recording_vendor([], received), [*hop, ("x-api-key", "their-own")])
    assert answer.status_code == 200, answer.text
    (sent,) = received
    names = [name.decode() for name, _ in sent]
    for name, _ in hop[:-1]:
        assert name == "connection" or name not in names
    assert [v for k, v in sent if k == b"connection"] == [b"keep-alive"]  # the proxy's own, for its own hop
    assert "x-api-key" not in names and names.count("x-trace") == 1
    assert dict(sent)[b"authorization"] == f"Bearer {VENDOR_KEY}".encode()
    assert not any(key.encode() in value or b"their-own" in value for _, value in sent)


def test_no_hop_by_hop_header_of_the_upstreams_answer_reaches_the_agent() -> None:
    hop = [
        (b"connection", b"keep-alive, x-first"),
        (b"connection", b"x-second"),
        (b"x-first", b"1"),
        (b"x-second", b"2"),
        (b"proxy-connection", b"keep-alive"),
        (b"te", b"trailers"),
        (b"trailer", b"x-checksum"),
        (b"upgrade", b"h2c"),
        (b"proxy-authenticate", b"Basic"),
        (b"proxy-authorization", b"Basic cHJveHk6cHc="),
    ]
    answer, _key = _through_proxy(_recording_vendor([*hop, (b"x-request-id", b"req-2")], []), [])
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "req-2"
    for name, _ in hop:
        if name != b"connection":  # uvicorn's own (keep-alive) is the agent's hop's
            assert name.decode() not in answer.headers
    assert answer.headers.get_list("connection") in ([], ["keep-alive"])


def test_the_vendor_account_and_its_cookies_stay_behind_the_proxy() -> None:
    """The account the proxy's key bills, and the vendor's cookies, are not the agent's to see."""
    account = [
        (b"openai-organization", b"org-proxy-owner"),
        (b"openai-project", b"proj_123"),
        (b"anthropic-organization-id", b"6c9f0f3e-0000-4000-8000-000000000000"),
        (b"set-cookie", b"__cf_bm=abc; path=/; HttpOnly"),
    ]
    answer, _key = _through_proxy(_recording_vendor([*account, (b"x-request-id", b"req-3")], []), [])
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "req-3"
    assert [name for name, _ in account if name.decode() in answer.headers] == []


def test_a_large_body_is_priced_like_a_small_one() -> None:
    """Bodies past 64 KiB are parsed and counted in a worker thread, with the same result."""
    with proxy_stack() as (guard, url, fake):
        key = RunKeys(guard).issue({"run": "r-l"}, {"total_usd": 1}).key
        long = [{"role": "user", "content": "word " * 40_000}]
        answer = _post(
            url, key, "/openai/v1/chat/completions", {"model": "gpt-4o-mini", "messages": long, "max_tokens": 10}
        )
        assert answer.status_code == 200
        assert len(json.dumps(fake.requests[-1]["body"])) > 64 * 1024
        assert spent(guard, run="r-l") > 0


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"auth": "digest"}, "auth must be bearer, basic or header:<Name>"),
        ({"auth": "header:bad name"}, "auth must be"),
        ({"auth": "basic"}, "'user:password'"),
        ({"headers": {"Host": "evil.example"}}, "can't be set here"),
        ({"headers": {"X-Ok": "a\r\nInjected: 1"}}, "control character"),
        ({"max_output_tokens": 0}, "at least 1"),
    ],
)
def test_upstream_options_are_checked_when_the_config_loads(options: dict[str, Any], problem: str) -> None:
    upstream = {"kind": "openai", "url": "http://127.0.0.1:9", "api_key": "sk-no-colon", **options}
    with pytest.raises(ConfigError, match=problem) as caught:
        parse_config({"store": "memory://", "proxy": {"upstreams": {"openai": upstream}}})
    assert "sk-no-colon" not in str(caught.value)


def test_every_request_a_live_key_makes_and_the_proxy_refuses_is_in_its_runs_audit_log() -> None:
    """Forwarded or blocked, every request is audited: refusals before any reservation (an upstream or model
    the key may not use, a request that can't be priced) too, with the key's labels and id."""
    with proxy_stack() as (guard, url, fake):
        issued = RunKeys(guard).issue({"run": "r-a", "model": "gpt-4o-mini"}, {"total_usd": 1}, upstreams=["openai"])
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 10}
        assert _post(url, issued.key, "/anthropic/v1/messages", body).status_code == 403
        assert _post(url, issued.key, "/openai/v1/chat/completions", {**body, "model": "gpt-4o"}).status_code == 403
        assert _post(url, issued.key, "/openai/v1/chat/completions", '{"model": 1, "model": 2}').status_code == 400
        guard.flush()
        refused = list(reversed(guard.audit(decision="blocked")))  # oldest first
        assert [r.data["reason"] for r in refused] == ["upstream_not_allowed", "model_not_allowed", "bad_request"]
        assert all(r.labels["run"] == "r-a" and r.data["key_id"] == issued.id for r in refused)
        assert [r.data["upstream"] for r in refused] == ["anthropic", "openai", "openai"]
        assert fake.requests == []


def test_an_upstreams_own_headers_are_secrets_to_its_repr() -> None:
    config = parse_config(
        {
            "store": "memory://",
            "proxy": {
                "upstreams": {
                    "v": {"kind": "openai", "url": "http://127.0.0.1:9", "headers": {"X-Vendor-Token": "tok-s3cret"}}
                }
            },
        }
    )
    assert "tok-s3cret" not in repr(config) and "tok-s3cret" not in str(config.proxy.upstreams["v"])

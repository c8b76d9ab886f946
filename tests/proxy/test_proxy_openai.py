"""`costguard proxy` driven by the real `openai` SDK (and curl) against the local fake vendor."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from proxy_helpers import VENDOR_KEY, Clock, proxy_stack, spent

from costguard.guard import Guard
from costguard.model import Period
from costguard.runkeys import RunKeys

MESSAGES = [{"role": "user", "content": "Where is my order?"}]


@pytest.fixture
def stack() -> Iterator[tuple[Guard, str, object]]:
    with proxy_stack() as parts:
        yield parts


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(url: str, key: str) -> openai.OpenAI:
    agent = openai.OpenAI(base_url=f"{url}/openai/v1", api_key=key, max_retries=0)
    _clients.append(agent)
    return agent


def test_a_call_is_forwarded_with_the_vendor_key_and_charged_its_usage(stack) -> None:
    guard, url, fake = stack
    issued = RunKeys(guard).issue({"run": "r-1", "agent": "billing"}, {"total_usd": 1})
    answer = client(url, issued.key).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=10, extra_headers={"x-fake-output-tokens": "4"}
    )
    assert answer.choices[0].message.content == "Your order ships on Tuesday."
    sent = fake.requests[-1]["headers"]
    assert sent["authorization"] == f"Bearer {VENDOR_KEY}"  # the run key never reaches the vendor
    assert issued.key not in json.dumps(fake.requests[-1])
    # Reserved $0.01 (10 output tokens at most), charged the 4 reported: $0.004.
    assert spent(guard, agent="billing", run="r-1") == pytest.approx(0.004)
    commits = [r for r in guard.audit(decision="commit") if r.labels.get("run") == "r-1"]
    assert len(commits) == 1
    assert commits[0].labels["agent"] == "billing" and commits[0].labels["feature"] == "openai"


def test_the_cap_answers_429_cap_exhausted_before_the_vendor_sees_the_call(stack) -> None:
    guard, url, fake = stack
    issued = RunKeys(guard).issue({"run": "r-2"}, {"daily_usd": 0.03})
    agent = client(url, issued.key)
    for _ in range(3):
        agent.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
    forwarded = len(fake.requests)
    with pytest.raises(openai.RateLimitError) as caught:
        agent.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
    assert len(fake.requests) == forwarded
    response = caught.value.response
    body = response.json()
    assert body["code"] == "cap_exhausted"
    assert body["cap_usd"] == 0.03 and body["spent_usd"] == 0.03
    assert body["scope"] == {"run": "r-2"}
    assert body["retry_after"] > 0
    assert int(response.headers["retry-after"]) == pytest.approx(body["retry_after"], abs=1)
    assert response.headers["x-should-retry"] == "false"
    blocked = [r for r in guard.audit(decision="blocked") if r.labels.get("run") == "r-2"]
    assert len(blocked) == 1


def test_unknown_revoked_and_expired_keys_get_401() -> None:
    clock = Clock()
    with proxy_stack(clock=clock) as (guard, url, fake):
        keys = RunKeys(guard)
        with pytest.raises(openai.AuthenticationError) as caught:
            client(url, "cgk-0123456789ab-" + "x" * 43).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=10
            )
        assert caught.value.response.json()["reason"] == "unknown"
        revoked = keys.issue({"run": "r-3"}, {"total_usd": 1})
        client(url, revoked.key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
        assert keys.revoke(revoked.id, actor="ops") is not None
        with pytest.raises(openai.AuthenticationError) as caught:
            client(url, revoked.key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
        assert caught.value.response.json()["reason"] == "revoked"
        short = keys.issue({"run": "r-4"}, {"total_usd": 1}, ttl_s=60)
        client(url, short.key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
        clock.now += 61
        with pytest.raises(openai.AuthenticationError) as caught:
            client(url, short.key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
        assert caught.value.response.json()["reason"] == "expired"
        assert len(fake.requests) == 2
        # A real key refused is in its run's audit log (who tried, which key, why); an unknown one isn't
        # (it names no run, and a flood of made-up keys would only fill the log).
        assert guard.flush(5)
        refused = sorted(
            (r.labels.get("run"), r.data["reason"], r.data["key_id"], r.labels["vendor"], r.data["path"])
            for r in guard.audit(decision="blocked", feature="openai")
        )
        assert refused == [
            ("r-3", "key_revoked", revoked.id, "openai", "v1/chat/completions"),
            ("r-4", "key_expired", short.id, "openai", "v1/chat/completions"),
        ]
        assert all(revoked.key not in json.dumps(r.data) for r in guard.audit())  # the secret never


def test_a_key_limited_to_other_upstreams_is_refused(stack) -> None:
    guard, url, fake = stack
    issued = RunKeys(guard).issue({"run": "r-5"}, {"total_usd": 1}, upstreams=["anthropic"])
    with pytest.raises(openai.PermissionDeniedError):
        client(url, issued.key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
    assert fake.requests == []


def test_an_upstream_error_is_passed_through_and_released(stack) -> None:
    guard, url, _fake = stack
    issued = RunKeys(guard).issue({"run": "r-6"}, {"total_usd": 1})
    with pytest.raises(openai.BadRequestError) as caught:
        client(url, issued.key).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=10, extra_headers={"x-fake-status": "400"}
        )
    assert caught.value.response.json() == {
        "error": {"message": "bad request", "type": "invalid_request_error", "code": None}
    }
    assert spent(guard, run="r-6") == 0
    assert all(c.reserved == 0 for c in guard.store.list_counters({Period.TOTAL: "total"}))
    released = [r for r in guard.audit(decision="release") if r.labels.get("run") == "r-6"]
    assert len(released) == 1


def test_an_unreachable_upstream_is_502_and_released() -> None:
    with proxy_stack() as (guard, url, fake):
        issued = RunKeys(guard).issue({"run": "r-7"}, {"total_usd": 1})
        fake.stop()
        with pytest.raises(openai.InternalServerError) as caught:
            client(url, issued.key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
        assert caught.value.response.status_code == 502
        assert spent(guard, run="r-7") == 0


def test_the_kill_switch_answers_503_with_its_header(stack) -> None:
    guard, url, fake = stack
    issued = RunKeys(guard).issue({"run": "r-8"}, {"total_usd": 1})
    guard.killswitch.activate(reason="incident #7", actor="ops")
    with pytest.raises(openai.InternalServerError) as caught:
        client(url, issued.key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
    assert caught.value.response.status_code == 503
    assert caught.value.response.headers["x-costguard-kill-switch"] == "active"
    assert fake.requests == []


def test_a_stream_is_passed_through_and_its_usage_committed(stack) -> None:
    guard, url, fake = stack
    issued = RunKeys(guard).issue({"run": "r-9"}, {"total_usd": 1})
    stream = client(url, issued.key).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_tokens=10,
        stream=True,
        extra_headers={"x-fake-output-tokens": "3"},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Your order ships on Tuesday."
    # The proxy asked for usage; the agent didn't, so it never sees the usage-only chunk.
    assert all(c.choices for c in chunks)
    assert fake.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    assert spent(guard, run="r-9") == pytest.approx(0.003)


def test_a_stream_the_client_abandons_is_settled(stack) -> None:
    guard, url, fake = stack
    issued = RunKeys(guard).issue({"run": "r-10"}, {"total_usd": 1})
    fake.delay_s = 0.0
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 10, "stream": True}
    with httpx.Client() as http:
        with http.stream(
            "POST",
            f"{url}/openai/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {issued.key}"},
        ) as response:
            assert response.status_code == 200
            next(response.iter_raw())  # the first event, then the client hangs up
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = guard.store.list_counters({Period.TOTAL: "total"})
        if rows and all(r.reserved == 0 for r in rows):
            break
        time.sleep(0.02)
    rows = [r for r in guard.store.list_counters({Period.TOTAL: "total"}) if dict(r.scope) == {"run": "r-10"}]
    assert rows and rows[0].reserved == 0
    assert rows[0].committed == 10_000  # the whole output cap: it may have run on to it


def test_curl_works_as_an_agent_in_any_language(stack) -> None:
    guard, url, _fake = stack
    issued = RunKeys(guard).issue({"run": "r-11"}, {"total_usd": 1})
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 10})
    out = subprocess.run(
        [
            "curl", "-sS", f"{url}/openai/v1/chat/completions",
            "-H", f"Authorization: Bearer {issued.key}", "-H", "Content-Type: application/json", "-d", body,
        ],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    assert json.loads(out.stdout)["choices"][0]["message"]["content"] == "Your order ships on Tuesday."
    assert spent(guard, run="r-11") == pytest.approx(0.01)


def test_a_path_can_not_climb_out_of_the_upstream(stack) -> None:
    guard, url, fake = stack
    issued = RunKeys(guard).issue({"run": "r-12"}, {"total_usd": 1})
    with httpx.Client() as http:
        response = http.send(
            http.build_request(
                "POST",
                f"{url}/openai/v1/%2e%2e/%2e%2e/admin",
                headers={"authorization": f"Bearer {issued.key}"},
                json={},
            )
        )
    assert response.status_code == 400 and response.json()["code"] == "bad_path"
    assert fake.requests == []


@pytest.mark.parametrize(
    "extra",
    [{"max_tokens": 10**30}, {"max_tokens": 10, "stream": True, "stream_options": "yes"}, {"max_tokens": -5}],
)
def test_odd_bodies_get_an_answer_never_a_crash(stack, extra) -> None:
    guard, url, _fake = stack
    issued = RunKeys(guard).issue({"run": "r-13"}, {"total_usd": 1})
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, **extra}
    with httpx.Client() as http:
        response = http.post(
            f"{url}/openai/v1/chat/completions", json=body, headers={"authorization": f"Bearer {issued.key}"}
        )
    assert response.status_code in (200, 400, 429, 502), response.text
    spent(guard, run="r-13")  # everything settled


@pytest.mark.parametrize(
    "path",
    [
        "v1/chat/completions%23",  # '#': the upstream would be sent v1/chat/completions, priced flat here
        "v1/chat/completions%3Fx=1",  # '?': likewise, as a query
        "v1/..%3F/chat/completions",  # '..?' is not '..', but the URL would still climb
        "v1/chat%5C..%5Ccompletions",  # backslashes
        "v1/chat/completions%0d%0aX-Injected:%201",  # control characters
    ],
)
def test_a_path_that_would_not_reach_the_upstream_as_written_is_refused(stack, path: str) -> None:
    """The server decodes the path: a percent-encoded '?', '#', '\\' or control character would change what
    the upstream is sent while the proxy priced something else (review finding)."""
    guard, url, fake = stack
    issued = RunKeys(guard).issue({"run": "r-20"}, {"total_usd": 1})
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 10}
    with httpx.Client() as http:
        response = http.post(f"{url}/openai/{path}", json=body, headers={"authorization": f"Bearer {issued.key}"})
    assert response.status_code == 400 and response.json()["code"] == "bad_path", response.text
    assert fake.requests == []
    assert spent(guard, run="r-20") == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "v1/batches"),
        ("POST", "v1/images/generations"),
        ("GET", "v1/files"),
        ("DELETE", "v1/files/file-1"),
        ("GET", "v1/chat/completions"),
    ],
)
def test_only_the_priced_endpoints_go_out_with_the_vendor_key(stack, method: str, path: str) -> None:
    """Batches, images, files…: the proxy can't price them, and a run key must not reach the organisation's
    files with the vendor key; they get 404 and the vendor sees nothing."""
    guard, url, fake = stack
    issued = RunKeys(guard).issue({"run": "r-21"}, {"total_usd": 1})
    with httpx.Client() as http:
        response = http.request(
            method, f"{url}/openai/{path}", json={}, headers={"authorization": f"Bearer {issued.key}"}
        )
    assert response.status_code == 404 and response.json()["code"] == "unsupported_path", response.text
    assert fake.requests == []


def test_a_priced_endpoint_needs_a_json_body(stack) -> None:
    guard, url, fake = stack
    issued = RunKeys(guard).issue({"run": "r-22"}, {"total_usd": 1})
    with httpx.Client() as http:
        response = http.post(
            f"{url}/openai/v1/chat/completions",
            content=b"model=gpt-4o-mini&max_tokens=100000",
            headers={"authorization": f"Bearer {issued.key}", "content-type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code == 400 and response.json()["code"] == "bad_request"
    assert fake.requests == []


def test_an_upstream_that_took_the_request_and_never_answered_is_charged_the_estimate() -> None:
    """Sent, then no answer within the upstream's timeout: the vendor may have run it, so the estimate is
    recorded (over-count, never under); a connection refused is released (test above)."""
    with proxy_stack(upstream_timeout_s=0.3) as (guard, url, fake):
        fake.delay_s = 1.0
        issued = RunKeys(guard).issue({"run": "r-23"}, {"total_usd": 1})
        with httpx.Client(timeout=10) as http:
            response = http.post(
                f"{url}/openai/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 10},
                headers={"authorization": f"Bearer {issued.key}"},
            )
        assert response.status_code == 502
        assert spent(guard, run="r-23") == pytest.approx(0.01)


def test_a_utf8_header_is_forwarded_as_sent(stack) -> None:
    """Clients send UTF-8 header values; the proxy passes the agent's bytes on (it used to answer 500)."""
    guard, url, fake = stack
    issued = RunKeys(guard).issue({"run": "r-24"}, {"total_usd": 1})
    note = "ümlaut-客户"
    with httpx.Client() as http:
        response = http.post(
            f"{url}/openai/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 10},
            headers=[("authorization", f"Bearer {issued.key}"), ("x-note", note.encode())],
        )
    assert response.status_code == 200, response.text
    assert fake.requests[-1]["headers"]["x-note"].encode("latin-1").decode() == note
    assert spent(guard, run="r-24") > 0

"""Generic upstreams: a fixed price per call, or the amount read from the request (Stripe's shape)."""

from __future__ import annotations

import json

import httpx
import pytest
from proxy_helpers import VENDOR_KEY, proxy_stack, serve, spent

from costguard.config import parse_config
from costguard.errors import ConfigError
from costguard.proxy import ProxyApp
from costguard.runkeys import RunKeys

# The fake vendor answers this path with JSON; a generic upstream doesn't care what it is.
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def test_a_fixed_price_and_an_amount_from_the_body_are_reserved_and_charged() -> None:
    with proxy_stack() as (guard, url, fake), httpx.Client() as http:
        issued = RunKeys(guard).issue({"run": "g-1"}, {"total_usd": 2})
        auth = {"authorization": f"Bearer {issued.key}"}
        response = http.post(f"{url}/twilio/v1/chat/completions", json=BODY, headers=auth)
        assert response.status_code == 200, response.text
        assert fake.requests[-1]["headers"]["authorization"] == f"Bearer {VENDOR_KEY}"
        assert spent(guard, run="g-1") == pytest.approx(0.02)
        response = http.post(f"{url}/stripe/v1/chat/completions", json={**BODY, "amount": 150}, headers=auth)
        assert response.status_code == 200, response.text
        assert spent(guard, run="g-1") == pytest.approx(1.52)  # 150 cents
        over = http.post(f"{url}/stripe/v1/chat/completions", json={**BODY, "amount": 50}, headers=auth)
        assert over.status_code == 429 and over.json()["code"] == "cap_exhausted"
        missing = http.post(f"{url}/stripe/v1/chat/completions", json=BODY, headers=auth)
        assert missing.status_code == 400
        assert len(fake.requests) == 2


async def form_upstream(scope, receive, send) -> None:
    """Stripe's shape: a form-encoded body, a JSON answer echoing what it got."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    auth = dict(scope["headers"]).get(b"authorization", b"").decode()
    answer = json.dumps({"received": body.decode(), "auth": auth}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer})


def test_a_form_encoded_amount_is_read_like_stripe_s() -> None:
    with serve(form_upstream) as upstream_url:
        config = parse_config(
            {
                "store": "memory://",
                "spool_dir": False,
                "proxy": {
                    "upstreams": {
                        "stripe": {
                            "kind": "generic",
                            "url": upstream_url,
                            "api_key": VENDOR_KEY,
                            "amount": {"json": "amount", "scale": 0.01},
                        }
                    }
                },
            }
        )
        guard = config.build()
        issued = RunKeys(guard).issue({"run": "g-2"}, {"total_usd": 5})
        with serve(ProxyApp(guard, config.proxy)) as url, httpx.Client() as http:
            response = http.post(
                f"{url}/stripe/v1/payment_intents",
                data={"amount": "250", "currency": "usd"},
                headers={"authorization": f"Bearer {issued.key}"},
            )
            assert response.status_code == 200, response.text
            assert response.json() == {"received": "amount=250&currency=usd", "auth": f"Bearer {VENDOR_KEY}"}
            assert spent(guard, run="g-2") == 2.5
        guard.close()


async def charging_upstream(scope, receive, send) -> None:
    """A vendor that says in its answer what the call cost: `{"charge": {"amount": <cents>}}`, the amount
    asked for in the `x-charge` header (absent: no charge field)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    charged = dict(scope["headers"]).get(b"x-charge")
    answer = {"id": "ch_1"} if charged is None else {"id": "ch_1", "charge": {"amount": charged.decode()}}
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(answer).encode()})


def test_a_generic_upstream_can_be_charged_what_its_answer_says() -> None:
    with serve(charging_upstream) as upstream_url:
        config = parse_config(
            {
                "store": "memory://",
                "spool_dir": False,
                "proxy": {
                    "upstreams": {
                        "sms": {
                            "kind": "generic",
                            "url": upstream_url,
                            "price_usd": 0.05,  # reserved: the most one message may cost
                            "actual": {"json": "charge.amount", "scale": 0.01},
                        }
                    }
                },
            }
        )
        guard = config.build()
        issued = RunKeys(guard).issue({"run": "g-3"}, {"total_usd": 1})
        auth = {"authorization": f"Bearer {issued.key}"}
        with serve(ProxyApp(guard, config.proxy)) as url, httpx.Client() as http:
            assert http.post(f"{url}/sms/messages", json={}, headers={**auth, "x-charge": "3"}).status_code == 200
            assert spent(guard, run="g-3") == pytest.approx(0.03)  # charged what the answer said
            assert http.post(f"{url}/sms/messages", json={}, headers=auth).status_code == 200
            assert spent(guard, run="g-3") == pytest.approx(0.08)  # no charge in the answer: the reserved price
            assert http.post(f"{url}/sms/messages", json={}, headers={**auth, "x-charge": "-4"}).status_code == 200
            assert spent(guard, run="g-3") == pytest.approx(0.13)  # a negative charge is no charge: reserved
        guard.close()
    with pytest.raises(ConfigError, match="actual are for generic upstreams"):
        parse_config(
            {"proxy": {"upstreams": {"o": {"kind": "openai", "url": "http://127.0.0.1:9", "actual": {"json": "x"}}}}}
        )

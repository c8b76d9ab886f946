"""Generic upstreams: a fixed price per call, or the amount read from the request (Stripe's shape)."""

from __future__ import annotations

import httpx
import pytest
from proxy_helpers import VENDOR_KEY, proxy_stack, spent

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

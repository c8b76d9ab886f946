"""Schema-driven fuzzing of the admin API with schemathesis: no input gets a 500, every answer is as documented."""

from __future__ import annotations

import os

import schemathesis
from admin_helpers import ADMIN_CONFIG, TOKENS, build_guard
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from costguard.admin import app

# CI runs the same 40 cases per operation every time; COSTGUARD_FUZZ_EXAMPLES=500 explores fresh ones locally.
EXAMPLES = int(os.environ.get("COSTGUARD_FUZZ_EXAMPLES", "0")) or None

# One guard for the whole run: fuzzed writes (limits, kill switches) pile up, as on a real server.
GUARD = build_guard()
APP = app(GUARD, admin=ADMIN_CONFIG)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)

# Not negative_data_rejection: a query value generated as the wrong type (0 instead of "0") is sent as the
# same text, so it flags valid requests; test_admin_limits and test_admin_reads check rejections directly.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,  # the same request without the token must be refused
    positive_data_acceptance,  # what the schema calls valid is accepted: it states every rule the server enforces
]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES or 40,
    deadline=None,
    derandomize=EXAMPLES is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_admin_api_survives_generated_input(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKENS['admin']}"}, checks=CHECKS)

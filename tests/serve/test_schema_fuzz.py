"""A bounded schemathesis run against the server's own OpenAPI schema over loopback HTTP: valid and invalid
requests generated from the documented operations never get a 5xx (or no answer).

The cases are drawn per operation with APIOperation.as_strategy inside the test (schemathesis' pytest
`from_fixture` loader does not run under pytest 9: it reads a Function._nodeid that pytest no longer has).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.serve.harness import serving

OPERATIONS = [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("POST", "/v1/feedback"),
              ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/metrics")]
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# Negative cases need something to break: only the POST bodies (the GETs take no parameters).
RUNS = [(m, p, POSITIVE) for m, p in OPERATIONS] + [(m, p, NEGATIVE) for m, p in OPERATIONS if m == "POST"]


@pytest.fixture(scope="module")
def api_schema(checkpoints, policy_file):
    models = {"llama": checkpoints["llama"], "mamba2": checkpoints["mamba2"]}
    # A small context bounds every generated completion to a few dozen tokens.
    with serving(models, policy=policy_file, max_context=48, max_concurrency=2, max_queue=64) as (url, _):
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_schema_documents_every_operation_and_its_request_body(api_schema):
    labels = {op.ok().label for op in api_schema.get_all_operations()}
    assert labels == {f"{method} {path}" for method, path in OPERATIONS}
    body = api_schema["/v1/completions"]["POST"].definition.raw["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/CompletionRequest")


@pytest.mark.parametrize("method, path, mode", RUNS, ids=[f"{m} {p} {g.value}" for m, p, g in RUNS])
def test_generated_requests_never_get_a_server_error(api_schema, method, path, mode):
    operation = api_schema[path][method]
    examples = 30 if method == "POST" else 2
    statuses = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(timeout=30)
        statuses.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    check()
    assert statuses and max(statuses) < 500
    if mode is NEGATIVE:
        assert all(400 <= s < 500 for s in statuses), statuses

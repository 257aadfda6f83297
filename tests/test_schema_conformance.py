"""The pod's OpenAPI document tells the truth: schemathesis sends requests generated from
/openapi.json to a real pod server (uvicorn on 127.0.0.1, a tiny classifier) and checks each
answer with its default checks: no 5xx, only the status codes and content types the document
declares, bodies matching the declared schemas, invalid requests refused."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection
from schemathesis.config import SchemathesisConfig

from conftest import running_server
from vision_worker.settings import load_settings
from vision_worker.worker import Worker

KEY = "schema-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Per operation and generation mode: enough to reach every declared answer of these routes
# (they branch on a few body shapes), few enough for well under a minute on 2 loaded cores.
EXAMPLES = 12
# Schemathesis' defaults, but that a 413 also counts as refusing an invalid request: a body
# over a limit (too many images) is refused before its other fields are read.
REFUSALS = SchemathesisConfig().projects.default.checks.negative_data_rejection.expected_statuses
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [*REFUSALS, "413"]}}}
)


@pytest.fixture(scope="module")
def pod_url(model_dir):
    worker = Worker.start(
        load_settings(
            MODEL_NAME=str(model_dir("resnet")),
            WARMUP=False,
            POD_API_KEY=KEY,
            # Small limits, so generated bodies reach the 413 answers too.
            MAX_IMAGES_PER_JOB=2,
            MAX_IMAGE_BYTES=10_000,
        )
    )
    with running_server(worker) as (url, _):
        yield url


@pytest.fixture(scope="module")
def pod_schema(pod_url):
    return schemathesis.openapi.from_url(f"{pod_url}/openapi.json", config=CONFIG)


def _failures(operation, mode: GenerationMode, headers: dict, examples: int) -> list[str]:
    """What schemathesis' default checks found on one operation."""

    # No shrinking: the failure as found is enough to read, and shrinking has no time bound.
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case) -> None:
        case.call_and_validate(headers=headers, excluded_checks=_not_applicable(operation, mode))

    try:
        check()
    except Unsatisfiable:
        return []  # negative mode: nothing about this operation can be invalid (no parameters)
    except (Exception, BaseExceptionGroup) as error:  # every failure, reported per operation
        return [f"{operation.label} ({mode.value}): {str(error)[:1500]}"]
    return []


def _not_applicable(operation, mode: GenerationMode) -> list:
    """/predict reads each form value as JSON when it parses, as text otherwise (its curl
    contract), so schemathesis' "invalid" form values are often valid once read: "null" for an
    optional option is its default (schemathesis flagged exactly that). Its other checks still
    run there: no 5xx, declared statuses, content types and bodies."""
    if mode is GenerationMode.NEGATIVE and operation.path == "/predict":
        return [negative_data_rejection]
    return []


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_route_answers_as_its_openapi_declares(pod_schema, mode):
    failures = []
    for result in pod_schema.get_all_operations():
        failures += _failures(result.ok(), mode, AUTH, EXAMPLES)
    assert not failures, "\n\n".join(failures)


def test_without_the_key_every_route_still_answers_as_declared(pod_schema):
    """The key check answers before any route runs: its 401 is declared on every route."""
    failures = []
    for result in pod_schema.get_all_operations():
        failures += _failures(result.ok(), GenerationMode.POSITIVE, {}, 3)
    assert not failures, "\n\n".join(failures)


def test_a_multipart_body_that_does_not_parse_is_a_declared_400(pod_url, pod_schema):
    """What schemathesis found once in negative mode: the parser's error escaped as a 500."""
    boundary = "7c5156fb04a2177cf9e322ad31ebde44"
    response = requests.post(
        f"{pod_url}/predict",
        data=f"--{boundary}\r\nNone--{boundary}--\r\n",
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("the multipart body does not parse")
    pod_schema["/predict"]["POST"].validate_response(response)

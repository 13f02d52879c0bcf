"""The OpenAPI document, checked against the app itself: schemathesis sends valid and invalid requests
to every documented operation, in process, and checks each answer against the document."""
from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis")  # the test extra
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,  # noqa: E402
                                               status_code_conformance)

# Not negative_data_rejection: it counts an empty list for k as invalid data, but an empty list sends
# no field at all, which is a valid request; the real findings of that check are pinned down below.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS = ["POST /api/predict", "GET /api/neighbours", "POST /api/neighbours",
              "GET /api/images/{image_id}/thumbnail", "GET /api/labels", "GET /api/openapi.json", "GET /healthz",
              "GET /", "GET /docs", "POST /api/feedback", "GET /api/feedback", "POST /api/admin/retrain",
              "GET /api/admin/retrain", "GET /metrics"]


@pytest.fixture(scope="module")
def app(predictor):
    """The app around the session's predictor (tests/conftest.py), in a predictor of its own that does not
    own (close) the shared store."""
    from emoreact.predictor import Predictor
    from emoreact.web import WebConfig, create_app

    return create_app(WebConfig(loader=lambda config: Predictor(predictor.backbone, predictor.store, predictor.head,
                                                                config.max_pixels), max_files=4))


@pytest.fixture(scope="module")
def api_schema(app):
    # schemathesis.pytest.from_fixture would parametrize by operation, but it fails under pytest 9
    # ('Function' object has no attribute '_nodeid'); each operation is driven by hand instead.
    # An explicit config keeps a schemathesis.toml in the working folder from changing the run.
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app, config=schemathesis.Config())


def test_the_list_below_is_every_documented_operation(api_schema):
    documented = {f"{method.upper()} {path}" for path, item in api_schema.raw_schema["paths"].items()
                  for method in item}
    assert documented == set(OPERATIONS)
    # Every operation is readable; "securitySchemes": null once made all of them invalid.
    assert all(result.ok() for result in api_schema.get_all_operations())


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize("label", OPERATIONS)
def test_operation_answers_as_documented(api_schema, label, mode):
    method, path = label.split(" ")
    operation = api_schema[path][method]
    if mode is GenerationMode.NEGATIVE and not (operation.query or operation.path_parameters or operation.body):
        pytest.skip("nothing to get wrong: the operation takes no input")

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    def answers_as_documented(case):
        case.call_and_validate(checks=CHECKS)

    answers_as_documented()


@pytest.mark.parametrize("where, value", [
    ("form", "true"), ("form", "1e1"), ("form", "1_0"), ("form", "2.0"), ("form", ["1", "100"]),
    ("query", "true"), ("query", "1_0"), ("query", ["1", "100"]),
])
def test_k_is_an_integer_in_digits_sent_once(app, where, value):
    """Found by schemathesis's negative testing: k=true was taken as 1, k=1e1 and k=1_0 as 10, and of
    k=1&k=100 the first won."""
    from synthetic import draw

    image = io.BytesIO()
    draw(("sad",), 1).save(image, "PNG")
    form = {"image": [(io.BytesIO(image.getvalue()), "a.png")]}
    query = {}
    (form if where == "form" else query)["k"] = value
    response = app.test_client().post("/api/predict", data=form, query_string=query)
    assert response.status_code == 400 and "k" in response.get_json()["error"], response.get_json()


def test_an_id_sent_twice_is_refused(app):
    response = app.test_client().get("/api/neighbours?id=1&id=2")
    assert response.status_code == 400 and "id was sent more than once" in response.get_json()["error"]

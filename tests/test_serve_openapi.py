"""The OpenAPI document matches the routes, and a fuzzer driven by it finds no 5xx and no way in without a token."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from bastion.serving.openapi import openapi_document
from serve_helpers import bearer, small_repository, start_server, token

schema = schemathesis.openapi.from_dict(openapi_document())
# Bounded: the inference and /authz operations (whose bodies and paths are the costliest to generate,
# and which are many: one per forwarded method) get fewer examples than the rest.
EXAMPLES, FEW = 25, 10
heavy = schema.include(path_regex=r"(/infer$|^/authz)")
light = schema.exclude(path_regex=r"(/infer$|^/authz)")


@pytest.fixture(scope="module")
def fuzzed():
    # Its own server and repository: the fuzzer's admin calls load and unload models.
    server = start_server(small_repository("repo-fuzz", "plain"))
    yield server
    server.stop()


def test_the_document_lists_exactly_the_routes():
    from starlette.routing import Route

    from bastion.serving.app import Gateway  # noqa: F401 (the routes come from the gateway's own builder)
    from bastion.serving.routes import build_routes

    class _Stub:
        repository = metrics = authorizer = audit = limits = None

    routes = {(route.path.replace("{path:path}", "{path}"), method.lower())
              for route in build_routes(_Stub()) if isinstance(route, Route)
              for method in route.methods if method != "HEAD"}
    documented = {(path, method) for path, operations in openapi_document()["paths"].items() for method in operations}
    assert routes == documented


def test_the_served_document_is_this_one(fuzzed):
    with fuzzed.client() as client:
        assert client.get("/v2/openapi.json").json() == openapi_document()


def _protected(case) -> bool:
    return case.path.startswith(("/v2/models", "/v2/repository")) or case.path.startswith("/authz") and \
        case.formatted_path.startswith(("/authz/v2/models", "/authz/v2/repository"))


def check_without_a_token(fuzzed, case):
    response = case.call(base_url=fuzzed.url, timeout=30)
    assert response.status_code < 500, response.text
    if case.method.upper() != case.operation.method.upper():  # the fuzzer also tries undocumented methods
        assert response.status_code == 405, (case.method, case.formatted_path, response.status_code)
    elif _protected(case):
        assert response.status_code == 401, (case.formatted_path, response.status_code, response.text)


def check_with_an_admin_token(fuzzed, case):
    # A schema-valid infer body is rarely a valid tensor for the model (its shape and bounds are in each
    # model's metadata, not in the schema), and a load may be refused: 400 is right there, and says why.
    excluded = [positive_data_acceptance] if case.operation.path.endswith(("/infer", "/load")) else []
    case.call_and_validate(base_url=fuzzed.url, headers=bearer(_admin_token()), timeout=30,
                           excluded_checks=excluded)


_FUZZ = {"deadline": None, "suppress_health_check": list(HealthCheck)}


@light.parametrize()
@settings(max_examples=EXAMPLES, **_FUZZ)
def test_fuzz_without_a_token(fuzzed, case):
    check_without_a_token(fuzzed, case)


@heavy.parametrize()
@settings(max_examples=FEW, **_FUZZ)
def test_fuzz_inference_and_authz_without_a_token(fuzzed, case):
    check_without_a_token(fuzzed, case)


@light.parametrize()
@settings(max_examples=EXAMPLES, **_FUZZ)
def test_fuzz_with_an_admin_token(fuzzed, case):
    check_with_an_admin_token(fuzzed, case)


@heavy.parametrize()
@settings(max_examples=FEW, **_FUZZ)
def test_fuzz_inference_and_authz_with_an_admin_token(fuzzed, case):
    check_with_an_admin_token(fuzzed, case)


_TOKENS: dict[str, str] = {}


def _admin_token() -> str:
    if "admin" not in _TOKENS:
        _TOKENS["admin"] = token("fuzzer", "admin", ttl=3600)
    return _TOKENS["admin"]

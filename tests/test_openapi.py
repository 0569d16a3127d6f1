"""`GET /openapi.json`: a valid OpenAPI 3.1 document of every route and every error.

The document is built from the operations each handler module declares
(`gateway.app.OPERATIONS`); these tests hold it to the route table, to the error tree and
to `openapi-spec-validator`, and check that a running replica serves exactly it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import httpx
import orjson
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from core.errors import GatewayError, MethodNotAllowed
from core.settings import Settings
from gateway.app import create_app
from gateway.openapi import error_statuses
from gateway.routes import LEGACY_PATHS, OPERATIONS, routes
from gateway.routes.guard import GuardedRoute
from tests.conftest import Replica

HTTP_METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "trace"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document an app builds (with the open-mode warning out of the way)."""
    logging.disable(logging.WARNING)
    try:
        app = create_app(Settings())
    finally:
        logging.disable(logging.NOTSET)
    built: dict[str, Any] = orjson.loads(app.state.openapi)
    return built


def described(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of every operation in the document."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def route_table() -> set[tuple[str, str]]:
    """Every (method, path) the app routes, paths as OpenAPI writes them."""
    routes = create_app(Settings()).routes
    return {
        (method, re.sub(r"{(\w+):\w+}", r"{\1}", route.path))
        for route in routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["version"] == version("approval-gateway")


def test_every_route_is_described_and_nothing_else(document: dict[str, Any]) -> None:
    assert {(method, path) for method, path, _ in described(document)} == route_table()


def test_a_route_is_guarded_exactly_when_its_operation_needs_a_key_and_says_its_roles() -> None:
    """The route table's guards and the document cannot drift apart: a keyed operation's
    route runs behind a guard, an open one's does not, and the operation's description
    names every role its guard requires."""
    operations = {(op.method, op.path): op for op in OPERATIONS}
    checked = 0
    for route in routes():
        for method in (route.methods or set()) - {"HEAD"}:
            operation = operations[(method, route.path)]
            assert isinstance(route, GuardedRoute) == operation.keyed, (method, route.path)
            if isinstance(route, GuardedRoute):
                for role in route.guard.roles:
                    assert f"`{role}`" in operation.description, (method, route.path, role)
            checked += 1
    assert checked == len(OPERATIONS)


def test_every_error_status_is_described_with_the_error_body(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for operation in OPERATIONS:
        answers = document["paths"][operation.openapi_path][operation.method.lower()]
        responses = answers["responses"]
        legacy = operation.path in LEGACY_PATHS  # app.error_response answers these its own way
        expected = "#/components/schemas/" + ("LegacyError" if legacy else "ErrorBody")
        for status in error_statuses(operation):
            content = responses[str(status)]["content"]
            assert content == {"application/json": {"schema": {"$ref": expected}}}, status
        failures = {int(s) for s in responses if int(s) >= 400} - error_statuses(operation)
        assert failures <= set(operation.replies), (operation.path, failures)
    assert set(schemas["ErrorBody"]["required"]) == {"error"}
    assert set(schemas["ErrorDetail"]["required"]) == {"message", "type", "param", "code"}


def error_classes() -> Iterator[type[GatewayError]]:
    """Every class of the error tree."""
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        kind = pending.pop()
        yield kind
        pending.extend(kind.__subclasses__())


def test_every_error_code_is_answered_by_some_operation() -> None:
    named = {kind.code for operation in OPERATIONS for kind in operation.error_classes()}
    # A method a path does not take is not an operation the document can describe.
    undescribed = {MethodNotAllowed.code}
    assert {kind.code for kind in error_classes()} - named == undescribed


def test_a_replica_serves_the_document_without_a_key(
    gateway: Replica, document: dict[str, Any]
) -> None:
    response = httpx.get(f"{gateway.url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    assert response.json() == document

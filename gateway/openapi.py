"""`GET /openapi.json`: the API as an OpenAPI 3.1 document, built from the code's own types.

Each handler module lists its operations next to its handlers (`OPERATIONS`): method and
path (the route table's template), what the request carries (a pydantic model for the body,
query and header parameters), what a success answers (a pydantic model, an event stream
whose `data:` are pydantic models, or a text media type) and the errors it can answer, as
classes of the error tree. `document` turns them into one document per app: every schema
comes from a pydantic model through `models_json_schema`, so no type is written twice, and
each error status lists the codes of the classes named for it.

An event stream is described as OpenAPI 3.1 validators read `text/event-stream` (3.2 calls
it `itemSchema`): the schema of one event, `{"id", "event", "data"}`, whose `data` is a
string holding JSON (`contentMediaType`, `contentSchema`) or `[DONE]`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Literal

import orjson
from pydantic import BaseModel
from pydantic.json_schema import (
    GenerateJsonSchema,
    JsonSchemaMode,
    JsonSchemaValue,
    models_json_schema,
)
from pydantic_core import core_schema
from starlette.convertors import CONVERTOR_TYPES

from core.errors import ErrorBody, GatewayError, InvalidHost, Unauthorized

OPENAPI_VERSION = "3.1.0"
PACKAGE = "approval-gateway"
REF = "#/components/schemas/{model}"
SECURITY_SCHEME = "apiKey"
REQUEST_ID = "X-Request-Id"
STRING: Mapping[str, Any] = {"type": "string"}
EVERY_OPERATION_ERRORS: tuple[type[GatewayError], ...] = (InvalidHost, GatewayError)
"""Any path: a `Host` not served (when hosts are guarded), and an unexpected failure."""
_TEMPLATE_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?}")


@dataclass(frozen=True, slots=True)
class Param:
    """A query, header or path parameter."""

    name: str
    description: str
    where: Literal["query", "header", "path"] = "query"
    schema: Mapping[str, Any] = field(default_factory=lambda: STRING)


@dataclass(frozen=True, slots=True)
class EventStream:
    """A `text/event-stream` body: each event's `data:` is JSON of one of `data`, or
    `[DONE]` when `done`."""

    data: tuple[type[BaseModel], ...]
    done: bool = True


@dataclass(frozen=True, slots=True)
class Reply:
    """What one status answers: JSON of `model` (or of the raw `json` schema), an event
    stream, and bodies of `text` media types (pages, scripts, metrics)."""

    description: str
    model: type[BaseModel] | None = None
    json: Mapping[str, Any] | None = None
    stream: EventStream | None = None
    text: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    """Response headers it may carry (besides `X-Request-Id`), by name: description."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path, as the route table has it."""

    method: str
    path: str
    """Starlette's template, converters included (`/v1/models/{model_id:path}`)."""
    summary: str
    replies: Mapping[int, Reply]
    description: str = ""
    body: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    errors: tuple[type[GatewayError], ...] = ()
    keyed: bool = True
    """Needs an API key (when keys are configured); then 401 is among its errors."""
    error_model: type[BaseModel] = ErrorBody
    """The body of its error responses (the first version's paths have their own)."""
    tag: str = "gateway"

    @property
    def openapi_path(self) -> str:
        """The path as OpenAPI writes it: `{name}`, without Starlette's converter."""
        return _TEMPLATE_PARAM.sub(r"{\1}", self.path)

    def error_classes(self) -> tuple[type[GatewayError], ...]:
        keyed: tuple[type[GatewayError], ...] = (Unauthorized,) if self.keyed else ()
        return (*EVERY_OPERATION_ERRORS, *keyed, *self.errors)


def document(operations: Sequence[Operation], title: str, description: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations`."""
    schemas, refs = _schemas(operations)
    paths: dict[str, dict[str, Any]] = defaultdict(dict)
    for operation in operations:
        paths[operation.openapi_path][operation.method.lower()] = _operation(operation, refs)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version(PACKAGE), "description": description},
        "paths": dict(paths),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from `GATEWAY_API_KEYS` as a bearer token. "
                    "A gateway without keys configured runs open and needs none.",
                }
            },
            "headers": {
                REQUEST_ID: {
                    "description": "The request's id: the client's own when it sent a usable "
                    "one, else a new one; approval sessions keep it (`request_id`).",
                    "required": True,
                    "schema": STRING,
                }
            },
        },
    }


def _schemas(operations: Sequence[Operation]) -> tuple[dict[str, Any], dict[type, str]]:
    """Every model's JSON Schema under `components/schemas`, and each model's `$ref`."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for operation in operations:
        if operation.body is not None:
            wanted[operation.body, "validation"] = None
        wanted[operation.error_model, "serialization"] = None
        for reply in operation.replies.values():
            models = (reply.model,) if reply.model is not None else ()
            streamed = reply.stream.data if reply.stream is not None else ()
            for model in (*models, *streamed):
                wanted[model, "serialization"] = None
    refs, defs = models_json_schema(list(wanted), ref_template=REF, schema_generator=_Schemas)
    return defs.get("$defs", {}), {model: ref["$ref"] for (model, _), ref in refs.items()}


class _Schemas(GenerateJsonSchema):
    """Pydantic's schemas without `"default": null`: it tells a client nothing, and where a
    field leaves null out of its schema (absent rather than null) it contradicts the type."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if "default" in json_schema and json_schema["default"] is None:
            del json_schema["default"]
        return json_schema


def _operation(operation: Operation, refs: Mapping[type, str]) -> dict[str, Any]:
    described: dict[str, Any] = {
        "operationId": _operation_id(operation),
        "summary": operation.summary,
        "tags": [operation.tag],
        "parameters": [_param(p) for p in _params(operation)],
        "responses": {
            **{str(s): _reply(r, refs) for s, r in operation.replies.items()},
            **_errors(operation, refs),
        },
        "security": [{SECURITY_SCHEME: []}] if operation.keyed else [],
    }
    if operation.description:
        described["description"] = operation.description
    if operation.body is not None:
        described["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": refs[operation.body]}}},
        }
    return described


def _operation_id(operation: Operation) -> str:
    words = re.findall(r"[A-Za-z0-9]+", operation.openapi_path)
    return "_".join([operation.method.lower(), *words])


def _params(operation: Operation) -> list[Param]:
    """The operation's parameters; a path's must be exactly those of its template."""
    in_path = {name: kind or "str" for name, kind in _TEMPLATE_PARAM.findall(operation.path)}
    declared = {p.name for p in operation.params if p.where == "path"}
    if declared != set(in_path):
        raise ValueError(f"{operation.path}: path parameters {sorted(declared)} are not the path's")
    # A path parameter matches what the route's converter matches, no more.
    return [
        Param(
            p.name, p.description, "path", {"type": "string", "pattern": _pattern(in_path[p.name])}
        )
        if p.where == "path"
        else p
        for p in operation.params
    ]


def _pattern(converter: str) -> str:
    return f"^(?:{CONVERTOR_TYPES[converter].regex})$"


def _param(param: Param) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": param.where,
        "description": param.description,
        "required": param.where == "path",
        "schema": dict(param.schema),
    }


def _reply(reply: Reply, refs: Mapping[type, str]) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if reply.model is not None:
        content["application/json"] = {"schema": {"$ref": refs[reply.model]}}
    elif reply.json is not None:
        content["application/json"] = {"schema": dict(reply.json)}
    if reply.stream is not None:
        content["text/event-stream"] = {"schema": _event_schema(reply.stream, refs)}
    for media_type in reply.text:
        content[media_type] = {"schema": STRING}
    headers: dict[str, Any] = {REQUEST_ID: {"$ref": f"#/components/headers/{REQUEST_ID}"}}
    for name, description in reply.headers.items():
        headers[name] = {"description": description, "schema": STRING}
    return {"description": reply.description, "headers": headers, "content": content}


def _event_schema(stream: EventStream, refs: Mapping[type, str]) -> dict[str, Any]:
    """One event of the stream, as a validator reads it: `data` holds JSON (or `[DONE]`)."""
    choices = [{"$ref": refs[model]} for model in stream.data]
    json_data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": choices[0] if len(choices) == 1 else {"anyOf": choices},
    }
    data = {"if": {"const": "[DONE]"}, "else": json_data} if stream.done else json_data
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "id": {"type": "string", "description": "The event's id, for `Last-Event-ID`."},
            "event": {"type": "string", "description": "The event's kind (`message` if unnamed)."},
            "data": data,
        },
    }


def _errors(operation: Operation, refs: Mapping[type, str]) -> dict[str, Any]:
    """One response per error status, listing the codes it can carry."""
    codes: dict[int, dict[str, str]] = defaultdict(dict)
    for kind in operation.error_classes():
        codes[kind.status_code][kind.code] = (kind.__doc__ or "").strip()
    if clash := set(codes) & set(operation.replies):
        raise ValueError(f"{operation.path}: statuses {sorted(clash)} are replies and errors")
    schema = {"$ref": refs[operation.error_model]}
    return {
        str(status): {
            "description": "\n".join(f"- `{code}`: {why}" for code, why in codes[status].items()),
            "headers": {REQUEST_ID: {"$ref": f"#/components/headers/{REQUEST_ID}"}},
            "content": {"application/json": {"schema": schema}},
        }
        for status in sorted(codes)
    }


def error_statuses(operation: Operation) -> set[int]:
    """The statuses `operation` answers with an error body."""
    return {kind.status_code for kind in operation.error_classes()}


def rendered(operations: Iterable[Operation], title: str, description: str) -> bytes:
    """The document as the bytes `GET /openapi.json` serves."""
    return orjson.dumps(document(list(operations), title, description))

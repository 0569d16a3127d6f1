"""Checking a tool call's arguments before policy or a person sees them.

The model writes the arguments, so they are untrusted input. A call's arguments
must be plain JSON that hashes canonically (RFC 8785: integers within ±2^53,
finite numbers, bounded depth) and must fit the tool's JSON Schema strictly:
no type coercion (`"5000"` is not an integer), no keys the schema does not name
(so no LangChain `{"type": "tool_call", "args": ...}` envelope and no injected
parameters), every required key present. The gateway checks before policy, the
worker checks again before it runs anything.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import re2
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

MAX_DEPTH = 32
"""How deeply arguments may nest (objects and arrays)."""
MAX_SAFE_INTEGER = 2**53 - 1
"""The largest integer RFC 8785 (and JavaScript) represents exactly."""
_MAX_MESSAGE = 300


class ArgumentError(ValueError):
    """Arguments that do not fit; the message says where and why, briefly."""

    def __init__(self, message: str, path: str = "arguments") -> None:
        super().__init__(message)
        self.path = path
        """Where: `arguments`, or the dotted path of the value at fault (`arguments.to`)."""


def json_problem(value: Any, depth: int = 0) -> str | None:
    """Why `value` is not plain, canonically hashable JSON, or None when it is."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, int):
        return None if abs(value) <= MAX_SAFE_INTEGER else "an integer beyond ±2^53"
    if isinstance(value, float):
        return None if value == value and abs(value) != float("inf") else "a non-finite number"
    if isinstance(value, list):
        items = value
    elif isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            return "an object key that is not a string"
        items = list(value.values())
    else:
        return f"a {type(value).__name__}, which JSON does not have"
    for item in items:
        problem = json_problem(item, depth + 1)
        if problem is not None:
            return problem
    return None


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` with `additionalProperties: false` on every object schema that leaves it open."""
    strict: dict[str, Any] = {key: _strict(value) for key, value in schema.items()}
    if (strict.get("type") == "object" or "properties" in strict) and (
        "additionalProperties" not in strict
    ):
        strict["additionalProperties"] = False
    return strict


def _strict(value: Any) -> Any:
    if isinstance(value, Mapping):
        return strict_schema(value)
    if isinstance(value, list):
        return [_strict(item) for item in value]
    return value


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    """A schema's pattern on RE2 (linear time: a client declares the schema, the model writes
    the value); None when RE2 cannot take it."""
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options=options)
    except re2.error:
        return None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string"):
        return
    regex = _regex(pattern)
    if regex is None:
        yield ValidationError(f"the schema's pattern {pattern!r} is not RE2 syntax")
    elif regex.search(instance) is None:
        yield ValidationError(f"{instance[:80]!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        regex = _regex(pattern)
        if regex is None:
            yield ValidationError(f"the schema's pattern {pattern!r} is not RE2 syntax")
            continue
        for key, value in instance.items():
            if regex.search(key) is not None:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


_Validator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {"pattern": _pattern, "patternProperties": _pattern_properties}
)
"""Draft 2020-12 with its regexes on RE2."""


class ArgumentChecker:
    """One tool's argument schema, made strict and compiled once (`SchemaError` when the
    schema is not a valid JSON Schema)."""

    def __init__(self, parameters: Mapping[str, Any]) -> None:
        schema = strict_schema({"type": "object", **parameters})
        Draft202012Validator.check_schema(schema)
        self._validator = _Validator(schema)

    def check(self, arguments: object) -> dict[str, Any]:
        """The arguments, if they fit; `ArgumentError` otherwise."""
        if not isinstance(arguments, dict):
            raise ArgumentError("the arguments are not a JSON object")
        problem = json_problem(arguments)
        if problem is not None:
            raise ArgumentError(f"the arguments contain {problem}")
        error = best_match(self._validator.iter_errors(arguments))
        if error is None:
            return arguments
        path = ["arguments", *(str(part) for part in error.absolute_path)]
        message = error.message
        if error.validator == "required" and isinstance(error.instance, dict):
            missing = [name for name in error.validator_value if name not in error.instance]
            path, message = [*path, str(missing[0])], "is required"
        where = _brief(".".join(path))
        raise ArgumentError(_brief(f"{where}: {message}"), where)


def _brief(message: str) -> str:
    # A hostile value can be megabytes long; the approver and the model need the gist.
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"

"""Tool policy: per-tool rules from a TOML file, with a small safe condition language.

A `Policy` holds a `ToolRule` per listed tool and a `default` rule for the
rest; `Policy.load()` reads and checks the file at start (see docs/policy.md).
An `ask_when` condition is parsed with `ast` and compiled to closures from a
whitelist of node kinds; nothing is ever evaluated as Python code.

    ValueError
    ├── PolicyError      the policy file is unreadable or invalid
    └── ConditionError   a condition is outside the language (reported in a PolicyError)
"""

from __future__ import annotations

import ast
import operator
import re
import tomllib
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, core_schema

from core.settings import PolicyMode, Settings

Arguments = Mapping[str, Any]
_Getter = Callable[[Arguments], Any]
_Test = Callable[[Arguments], bool]

MAX_REGEX_CHARS = 200
FUNCTIONS = ("startswith", "matches")
_MISSING = object()  # the value of an argument the call does not have

_COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda item, container: item in container,
    ast.NotIn: lambda item, container: item not in container,
}
_JSON_CONSTANTS = frozenset({"true", "false", "null", "none"})  # not argument names: a likely slip
_LANGUAGE = (
    "conditions use and, or, not, comparisons (== != < <= > >= in, not in), argument names, "
    "constants, lists of constants, startswith() and matches()"
)


class PolicyError(ValueError):
    """The policy file cannot be read or is invalid; the message names file, tool and field."""


class ConditionError(ValueError):
    """A condition that is not valid in the condition language."""


class _Rejected(Exception):
    """A part of a condition outside the language; `Condition` reports it as a ConditionError."""

    def __init__(self, node: ast.AST, reason: str) -> None:
        super().__init__(reason)
        self.node, self.reason = node, reason


class Condition:
    """One `ask_when` condition, checked and compiled once; `holds()` evaluates it."""

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            self._test = _compile_test(_parse(text))
        except _Rejected as exc:
            part = ast.get_source_segment(text.strip(), exc.node)
            where = "" if part == text.strip() else f" at {part!r}"
            raise ConditionError(f"condition {text!r}{where}: {exc.reason}") from None

    def holds(self, arguments: Arguments) -> bool:
        """Whether the condition is true for a call's arguments; never raises."""
        return self._test(arguments)

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Condition) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # Validated from the file's strings, dumped back as the same strings.
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda c: c.text),
        )

    @classmethod
    def _validate(cls, value: object) -> Condition:
        if isinstance(value, Condition):
            return value
        if not isinstance(value, str):
            # A ValueError, not a TypeError: pydantic reports only the former as a field error.
            raise ValueError("a condition is a string")
        return cls(value)


def _parse(text: str) -> ast.expr:
    try:
        with warnings.catch_warnings():
            # An invalid escape ('\d' outside r'...') is only a warning to Python.
            warnings.simplefilter("error")
            return ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, Warning) as exc:
        reason = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        hint = "; write regexes as r'...'" if "escape" in reason else ""
        raise ConditionError(f"condition {text!r} is not valid syntax: {reason}{hint}") from None


def _compile_test(node: ast.expr) -> _Test:
    if isinstance(node, ast.BoolOp):
        parts = [_compile_test(value) for value in node.values]
        combine = all if isinstance(node.op, ast.And) else any
        return lambda arguments: combine(part(arguments) for part in parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile_test(node.operand)
        return lambda arguments: not inner(arguments)
    if isinstance(node, ast.Compare):
        return _compile_compare(node)
    if isinstance(node, ast.Call):
        return _compile_call(node)
    value = _compile_operand(node)  # a bare operand is true when the argument is truthy
    return lambda arguments: _truthy(value(arguments))


def _truthy(value: Any) -> bool:
    return value is not _MISSING and bool(value)


def _compile_compare(node: ast.Compare) -> _Test:
    compares = []
    for op in node.ops:
        if type(op) not in _COMPARISONS:
            raise _Rejected(node, "'is' is not allowed, use == or !=")
        compares.append(_COMPARISONS[type(op)])
    operands = [_compile_operand(node.left), *map(_compile_operand, node.comparators)]

    def holds(arguments: Arguments) -> bool:
        values = [operand(arguments) for operand in operands]
        return all(map(_compare, compares, values, values[1:]))

    return holds


def _compare(compare: Callable[[Any, Any], Any], left: Any, right: Any) -> bool:
    # A missing argument or a type mismatch (str < int) makes a comparison false.
    if left is _MISSING or right is _MISSING:
        return False
    try:
        return bool(compare(left, right))
    except TypeError:
        return False


def _compile_call(node: ast.Call) -> _Test:
    name = node.func.id if isinstance(node.func, ast.Name) else ""
    if name not in FUNCTIONS:
        raise _Rejected(node, "only startswith() and matches() may be called")
    literal = node.args[1] if len(node.args) == 2 else None
    if node.keywords or not (isinstance(literal, ast.Constant) and isinstance(literal.value, str)):
        raise _Rejected(node, f"write {name}(argument_name, 'text')")
    subject = _compile_reference(node.args[0])
    if name == "startswith":
        prefix: str = literal.value

        def starts(arguments: Arguments) -> bool:
            value = subject(arguments)
            return isinstance(value, str) and value.startswith(prefix)

        return starts
    pattern = _compile_regex(literal.value, literal)

    def matches(arguments: Arguments) -> bool:
        value = subject(arguments)
        return isinstance(value, str) and pattern.search(value) is not None

    return matches


def _compile_regex(source: str, literal: ast.expr) -> re.Pattern[str]:
    if len(source) > MAX_REGEX_CHARS:
        raise _Rejected(literal, f"the regex is longer than {MAX_REGEX_CHARS} characters")
    try:
        return re.compile(source)
    except re.error as exc:
        raise _Rejected(literal, f"bad regex: {exc}") from None


def _compile_operand(node: ast.expr) -> _Getter:
    if isinstance(node, ast.Name | ast.Attribute):
        return _compile_reference(node)
    if isinstance(node, ast.Call):
        raise _Rejected(node, "only startswith() and matches() may be called, as tests")
    constant = _constant(node)
    return lambda _arguments: constant


def _compile_reference(node: ast.expr) -> _Getter:
    path = tuple(_reference_path(node))

    def lookup(arguments: Arguments) -> Any:
        value: Any = arguments
        for key in path:
            if not isinstance(value, Mapping) or key not in value:
                return _MISSING
            value = value[key]
        return value

    return lookup


def _reference_path(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Name):
        if node.id in _JSON_CONSTANTS:
            raise _Rejected(node, "write the constants True, False and None capitalised")
        prefix, key = [], node.id
    elif isinstance(node, ast.Attribute):
        prefix, key = _reference_path(node.value), node.attr
    else:
        raise _Rejected(node, "expected an argument name")
    if key.startswith("__"):
        raise _Rejected(node, "names starting with '__' are not allowed")
    return [*prefix, key]


def _constant(node: ast.expr) -> Any:
    if isinstance(node, ast.List | ast.Tuple):
        return tuple(_scalar(item) for item in node.elts)
    return _scalar(node)


def _scalar(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and (
        node.value is None or isinstance(node.value, str | int | float)
    ):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        number = _scalar(node.operand)
        if isinstance(number, int | float) and not isinstance(number, bool):
            return -number if isinstance(node.op, ast.USub) else number
    raise _Rejected(node, f"not allowed; {_LANGUAGE}")


class ToolRule(BaseModel):
    """What policy says about one tool; unset fields fall back as docs/policy.md describes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    mode: PolicyMode | None = Field(default=None, strict=False)
    """auto, ask or deny; unset: auto for read-only tools, else the default rule's mode."""
    ask_when: list[Condition] = Field(default_factory=list)
    """Conditions over the call's arguments; any true turns an `auto` call into `ask`."""
    editable: bool = True
    """Whether an approver may change the arguments before approving."""
    idempotent: bool | None = None
    """Overrides the tool's `idempotent` metadata (safe to run again after a worker died)."""
    read_only: bool | None = None
    """Overrides the tool's `read_only` metadata; read-only tools default to `auto`."""
    timeout_s: float | None = Field(default=None, gt=0)
    """Overrides the tool's `timeout_s` metadata and the worker's default."""
    approvers: list[str] = Field(default_factory=lambda: ["approver", "admin"], min_length=1)
    """Roles that may decide this tool's calls."""

    def asks(self, arguments: Arguments) -> bool:
        """Whether an `ask_when` condition holds for these arguments."""
        return any(condition.holds(arguments) for condition in self.ask_when)


class Policy(BaseModel):
    """Rules for listed tools, and the `default` rule for every other tool."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    default: ToolRule = Field(default_factory=ToolRule)
    tools: dict[str, ToolRule] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ask_when_has_effect(self) -> Self:
        for name, rule in self.tools.items():
            if rule.ask_when and rule.mode in (PolicyMode.ASK, PolicyMode.DENY):
                raise ValueError(
                    f"tool {name!r}, field 'ask_when': has no effect with mode "
                    f"{rule.mode.value!r}; conditions only turn an auto call into ask"
                )
        return self

    @classmethod
    def load(cls, path: Path) -> Policy:
        """Read and check a TOML policy file; raises `PolicyError` naming file, tool and field."""
        try:
            with path.open("rb") as file:
                data = tomllib.load(file)
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read the policy file: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{path}: not valid TOML: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolicyError("\n".join(_problem(path, error) for error in exc.errors())) from None

    @classmethod
    def from_modes(cls, modes: Mapping[str, PolicyMode]) -> Policy:
        """A policy from the simple `tool_policy` map (tool name → mode)."""
        return cls().with_modes(modes)

    def with_modes(self, modes: Mapping[str, PolicyMode]) -> Policy:
        """This policy plus a rule, the default one with `mode` set, per tool it does not list."""
        added = {
            name: self.default.model_copy(update={"mode": PolicyMode(mode)})
            for name, mode in modes.items()
            if name not in self.tools
        }
        return self.model_copy(update={"tools": {**self.tools, **added}})

    def rule_for(self, name: str) -> ToolRule:
        """The tool's rule, or the default rule when the policy does not list it."""
        return self.tools.get(name, self.default)

    def mode_for(self, name: str, arguments: Arguments, *, read_only_tool: bool) -> PolicyMode:
        """The mode for one call; `read_only_tool` is the tool's own `read_only` metadata."""
        listed, rule = self.tools.get(name), self.rule_for(name)
        read_only = read_only_tool if rule.read_only is None else rule.read_only
        if listed is not None and listed.mode is not None:
            mode = listed.mode
        elif read_only:
            mode = PolicyMode.AUTO
        else:
            mode = self.default.mode or PolicyMode.ASK
        if mode is PolicyMode.AUTO and rule.asks(arguments):
            return PolicyMode.ASK
        return mode


def policy_from_settings(settings: Settings) -> Policy:
    """`policy_file` if set, plus the `tool_policy` modes of tools the file does not list."""
    policy = Policy.load(settings.policy_file) if settings.policy_file else Policy()
    return policy.with_modes(settings.tool_policy)


def _problem(path: Path, error: ErrorDetails) -> str:
    """One validation error as `file: tool 'x', field 'y': what is wrong`."""
    loc = [str(part) for part in error["loc"]]
    reason = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    if not loc:  # a whole-policy check: the reason names the tool and field itself
        return f"{path}: {reason}"
    if loc[:1] == ["tools"] and len(loc) > 1:
        scope, rest, fields = f"tool {loc[1]!r}", loc[2:], ToolRule.model_fields
    elif loc[:1] == ["default"]:
        scope, rest, fields = "[default]", loc[1:], ToolRule.model_fields
    else:
        scope, rest, fields = "top level", loc, Policy.model_fields
    where = f"{scope}, field {rest[0] + ''.join(f'[{i}]' for i in rest[1:])!r}" if rest else scope
    if error["type"] == "extra_forbidden":
        reason = f"unknown field (allowed: {', '.join(fields)})"
    return f"{path}: {where}: {reason}"

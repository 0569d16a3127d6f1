"""Tool policy: per-tool rules from a TOML file, with a small safe condition language.

A `Policy` holds a `ToolRule` per listed tool and a `default` rule for the
rest; `Policy.load()` reads and checks the file at start (see docs/policy.md).
An `ask_when` condition is parsed with `ast` and compiled to closures from a
whitelist of node kinds; nothing is ever evaluated as Python code. Regexes run on
RE2 (linear time). A condition that cannot be evaluated for a call (a missing
argument, operands of different JSON kinds) holds: policy fails closed, to `ask`.
`Policy.verdict()` gives a call's mode with the reason an approver reads.

    ValueError
    ├── PolicyError      the policy file is unreadable or invalid
    └── ConditionError   a condition is outside the language (reported in a PolicyError)
"""

from __future__ import annotations

import ast
import operator
import tomllib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, Self

import re2
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
Side = Literal["server", "client"]
"""Whose tool a call is: the gateway's, or one the request declared and its client runs."""
_Getter = Callable[[Arguments], Any]
_Test = Callable[[Arguments], bool]

MAX_REGEX_CHARS = 200
FUNCTIONS = ("startswith", "matches")
_JSON_CONSTANTS = frozenset({"true", "false", "null", "none"})  # not argument names: a likely slip
_LANGUAGE = (
    "conditions use and, or, not, comparisons (== != < <= > >= in, not in), argument names, "
    "constants, lists of constants, startswith() and matches()"
)


class PolicyError(ValueError):
    """The policy file cannot be read or is invalid; the message names file, tool and field."""


class ConditionError(ValueError):
    """A condition that is not valid in the condition language."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What policy says about one call, and why, in words an approver reads."""

    mode: PolicyMode
    reason: str


class _Rejected(Exception):
    """A part of a condition outside the language; `Condition` reports it as a ConditionError."""

    def __init__(self, node: ast.AST, reason: str) -> None:
        super().__init__(reason)
        self.node, self.reason = node, reason


class _Undecidable(Exception):
    """A reference is missing or operands are of different kinds: the condition holds."""


class _Regex(Protocol):
    def search(self, text: str) -> object | None: ...


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

    def evaluate(self, arguments: Arguments) -> bool | None:
        """The condition's value for a call's arguments, None when it cannot be evaluated
        (docs/policy.md, "How values behave"); never raises."""
        try:
            return self._test(arguments)
        except (_Undecidable, RecursionError):  # RecursionError: absurdly deep arguments
            return None

    def holds(self, arguments: Arguments) -> bool:
        """Whether the condition holds: it is true, or cannot be evaluated (fail closed)."""
        return self.evaluate(arguments) is not False

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
    # Every part is evaluated (no short cut), so an undecidable part is never skipped.
    if isinstance(node, ast.BoolOp):
        parts = [_compile_test(value) for value in node.values]
        combine = all if isinstance(node.op, ast.And) else any
        return lambda arguments: combine([part(arguments) for part in parts])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile_test(node.operand)
        return lambda arguments: not inner(arguments)
    if isinstance(node, ast.Compare):
        return _compile_compare(node)
    if isinstance(node, ast.Call):
        return _compile_call(node)
    value = _compile_operand(node)  # a bare operand is true when the argument is truthy
    return lambda arguments: bool(value(arguments))


def _kind(value: Any) -> str:
    """A value's JSON kind: a bool is not a number; a list constant (a tuple) is an array."""
    kind = _KINDS.get(type(value))
    if kind is None:
        raise _Undecidable  # not a value JSON arguments can hold
    return kind


_KINDS = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    tuple: "array",
    dict: "object",
}


def _same_kind(left: Any, right: Any) -> str:
    kind = _kind(left)
    if _kind(right) != kind:
        raise _Undecidable
    return kind


def _json_equal(left: Any, right: Any) -> bool:
    """Equality of JSON values whose kinds agree at every depth (`[1]` is not `[True]`)."""
    if _kind(left) != _kind(right):
        return False
    if isinstance(left, list | tuple):
        return len(left) == len(right) and all(map(_json_equal, left, right))
    if isinstance(left, Mapping):
        same_keys = left.keys() == right.keys()
        return same_keys and all(_json_equal(v, right[k]) for k, v in left.items())
    return bool(left == right)


def _equal(left: Any, right: Any) -> bool:
    if left is None or right is None:  # always decidable: "is it null?"
        return left is right
    _same_kind(left, right)
    return _json_equal(left, right)


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def ordered(left: Any, right: Any) -> bool:
        if _same_kind(left, right) not in ("number", "string"):
            raise _Undecidable
        return compare(left, right)

    return ordered


def _contains(item: Any, container: Any) -> bool:
    kind = _kind(container)
    if kind == "array":
        return any(_json_equal(item, element) for element in container)
    if kind in ("string", "object") and isinstance(item, str):
        return item in container
    raise _Undecidable


_COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: _equal,
    ast.NotEq: lambda left, right: not _equal(left, right),
    ast.Lt: _ordered(operator.lt),
    ast.LtE: _ordered(operator.le),
    ast.Gt: _ordered(operator.gt),
    ast.GtE: _ordered(operator.ge),
    ast.In: _contains,
    ast.NotIn: lambda item, container: not _contains(item, container),
}


def _compile_compare(node: ast.Compare) -> _Test:
    compares = []
    for op in node.ops:
        if type(op) not in _COMPARISONS:
            raise _Rejected(node, "'is' is not allowed, use == or !=")
        compares.append(_COMPARISONS[type(op)])
    operands = [_compile_operand(node.left), *map(_compile_operand, node.comparators)]

    def holds(arguments: Arguments) -> bool:
        values = [operand(arguments) for operand in operands]
        # A list, not a generator: every link is evaluated, so none is skipped.
        return all([test(a, b) for test, a, b in zip(compares, values, values[1:], strict=False)])

    return holds


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
            return _text(subject(arguments)).startswith(prefix)

        return starts
    pattern = _compile_regex(literal.value, literal)

    def matches(arguments: Arguments) -> bool:
        return pattern.search(_text(subject(arguments))) is not None

    return matches


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Undecidable
    return value


def _compile_regex(source: str, literal: ast.expr) -> _Regex:
    if len(source) > MAX_REGEX_CHARS:
        raise _Rejected(literal, f"the regex is longer than {MAX_REGEX_CHARS} characters")
    options = re2.Options()
    options.log_errors = False  # a bad pattern is reported once, in the PolicyError
    try:
        regex: _Regex = re2.compile(source, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "cannot compile"
        if isinstance(reason, bytes):  # the binding reports RE2's message as bytes
            reason = reason.decode(errors="replace")
        hint = "RE2 syntax: no backreferences or look-arounds"
        raise _Rejected(literal, f"bad regex ({hint}): {reason}") from None
    return regex


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
                raise _Undecidable
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
    applies_to: Literal["server", "client", "both"] = "both"
    """Which tools of this name the rule covers: the gateway's (`server`), those a request
    declares in its `tools` and its client runs (`client`), or `both`."""
    ask_when: list[Condition] = Field(default_factory=list)
    """Conditions over the call's arguments; any true turns an `auto` call into `ask`."""
    editable: bool = True
    """Whether an approver may change the arguments before approving."""
    idempotent: bool | None = None
    """Overrides the tool's `idempotent` metadata (safe to run again after a worker died)."""
    read_only: bool | None = None
    """Overrides the tool's `read_only` metadata; read-only tools default to `auto`."""
    untrusted_output: bool | None = None
    """Overrides the tool's `untrusted_output` metadata: its results may carry text the model
    should not obey (web pages, emails, tickets); after one, calls that change things ask."""
    timeout_s: float | None = Field(default=None, gt=0)
    """Overrides the tool's `timeout_s` metadata and the worker's default."""
    approvers: list[str] = Field(default_factory=lambda: ["approver", "admin"], min_length=1)
    """Roles that may decide this tool's calls."""

    def asks(self, arguments: Arguments) -> bool:
        """Whether an `ask_when` condition holds (or cannot be evaluated) for these arguments."""
        return self.ask_reason(arguments) is not None

    def ask_reason(self, arguments: Arguments) -> str | None:
        """Why `ask_when` turns an auto call into ask: the first condition that holds or
        cannot be evaluated; None when none does."""
        for condition in self.ask_when:
            value = condition.evaluate(arguments)
            if value is None:
                return f"ask_when could not be evaluated: {condition.text} (asks)"
            if value:
                return f"ask_when: {condition.text}"
        return None


class Policy(BaseModel):
    """Rules for listed tools, and the `default` rule for every other tool."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    default: ToolRule = Field(default_factory=ToolRule)
    client_default: ToolRule = Field(default_factory=lambda: ToolRule(mode=PolicyMode.ASK))
    """The rule of every client-declared tool no rule names (`[client_default]`; asks)."""
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

    def rule_for(self, name: str, side: Side = "server") -> ToolRule:
        """The tool's rule for that side, or the side's default rule."""
        listed = self.tools.get(name)
        if listed is not None and listed.applies_to in (side, "both"):
            return listed
        return self.client_default if side == "client" else self.default

    def verdict(
        self,
        name: str,
        arguments: Arguments,
        *,
        read_only_tool: bool,
        untrusted_context: bool = False,
        side: Side = "server",
    ) -> Verdict:
        """The mode for one call and why. `read_only_tool` is the tool's own `read_only`
        metadata; `untrusted_context`: the conversation already holds a result of a tool
        with `untrusted_output`; `side`: a server-side tool, or one the client declared.
        Only an `auto` verdict can still turn into `ask`."""
        rule = self.rule_for(name, side)
        read_only = read_only_tool if rule.read_only is None else rule.read_only
        verdict = self._rule_verdict(name, read_only, side)
        if verdict.mode is not PolicyMode.AUTO:
            return verdict
        if untrusted_context and not read_only:
            reason = f"the conversation contains untrusted tool output; {name} is not read-only"
            return Verdict(PolicyMode.ASK, reason)
        asks = rule.ask_reason(arguments)
        return verdict if asks is None else Verdict(PolicyMode.ASK, asks)

    def mode_for(self, name: str, arguments: Arguments, *, read_only_tool: bool) -> PolicyMode:
        """The mode for one call; `read_only_tool` is the tool's own `read_only` metadata."""
        return self.verdict(name, arguments, read_only_tool=read_only_tool).mode

    def _rule_verdict(self, name: str, read_only: bool, side: Side) -> Verdict:
        """The mode before `ask_when` and the untrusted context (docs/policy.md, Precedence)."""
        listed = self.tools.get(name)
        if listed is not None and listed.applies_to not in (side, "both"):
            listed = None
        if listed is not None and listed.mode is not None:
            return Verdict(listed.mode, f"policy: {name} {_SAYS[listed.mode]}")
        if read_only:
            return Verdict(PolicyMode.AUTO, f"read-only: {_SAYS[PolicyMode.AUTO]}")
        fallback = self.client_default if side == "client" else self.default
        mode = fallback.mode or PolicyMode.ASK
        which = "client default rule" if side == "client" else "default rule"
        return Verdict(mode, f"policy: {which} {_SAYS[mode]}")


_SAYS = {
    PolicyMode.AUTO: "runs without asking",
    PolicyMode.ASK: "asks",
    PolicyMode.DENY: "is denied",
}


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
    elif loc[:1] in (["default"], ["client_default"]):
        scope, rest, fields = f"[{loc[0]}]", loc[1:], ToolRule.model_fields
    else:
        scope, rest, fields = "top level", loc, Policy.model_fields
    where = f"{scope}, field {rest[0] + ''.join(f'[{i}]' for i in rest[1:])!r}" if rest else scope
    if error["type"] == "extra_forbidden":
        reason = f"unknown field (allowed: {', '.join(fields)})"
    return f"{path}: {where}: {reason}"

"""docs/configuration.md, generated from `Settings`: every variable, its default and meaning.

`python -m core.config_reference` (`make config-docs`) writes it; tests/test_config_reference.py
fails when the committed file differs from what this renders. The groups are the `# Section`
comments of `Settings`' body, then one per nested model (`GATEWAY_WORKER__*`), then the objects
of the JSON lists (`GATEWAY_API_KEYS`).
"""

from __future__ import annotations

import inspect
import json
import re
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from core.settings import Settings

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
PREFIX = str(Settings.model_config.get("env_prefix", ""))
NESTED = str(Settings.model_config.get("env_nested_delimiter", "__"))

INTRO = f"""\
# Configuration

<!-- Generated from core/settings.py by `make config-docs`; do not edit by hand. -->

Every setting is an environment variable: the prefix `{PREFIX}` and the setting's name in
capitals (`redis_url` is `{PREFIX}REDIS_URL`). A nested group joins its name and the
setting's with `{NESTED}` (`{PREFIX}WORKER{NESTED}CONCURRENCY=16`). A `.env` file in the
working directory is read too; the environment wins over it. Lists and maps are JSON
(`{PREFIX}MODELS='["gpt-4o", "gpt-4o-mini"]'`). One pydantic-settings object,
`Settings` in [`core/settings.py`](../core/settings.py), reads them for every process (the
gateway, the worker, the offline model); variables it does not know are ignored. Secrets are
listed without their values.

Traces are configured by the standard `OTEL_*` variables instead
([tracing.md](tracing.md)).
"""


def sections() -> dict[str, list[str]]:
    """The plain settings under each `# Section` comment of `Settings`' body, in order."""
    groups: dict[str, list[str]] = {}
    title = "General"
    for line in inspect.getsource(Settings).splitlines():
        if comment := re.fullmatch(r" {4}# (.+)", line):
            title = comment[1].split(";")[0]
        elif (name := re.match(r" {4}(\w+):", line)) and is_plain(name[1]):
            groups.setdefault(title, []).append(name[1])
    return groups


def is_plain(name: str) -> bool:
    """A setting of `Settings` itself, not a nested group."""
    field = Settings.model_fields.get(name)
    return field is not None and nested_model(field) is None


def nested_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model of a nested group (`worker`), or None."""
    kind = field.annotation
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def listed_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model of each entry of a JSON list of objects (`api_keys`), or None."""
    args = get_args(field.annotation)
    if get_origin(field.annotation) is list and args and isinstance(args[0], type):
        return args[0] if issubclass(args[0], BaseModel) else None
    return None


def default_of(field: FieldInfo) -> str:
    """The default as the environment would spell it; a secret's is never shown."""
    value = field.get_default(call_default_factory=True, validated_data={})
    if value is PydanticUndefined:
        return "required"
    if field.annotation is SecretStr:
        return "(secret)"
    if value is None:
        return "unset"
    return f"`{spelled(value)}`"


def spelled(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, list | dict):
        return json.dumps(value, default=spelled)
    return str(value)


def meaning(field: FieldInfo) -> str:
    """The field's description on one line, safe in a table cell."""
    return " ".join((field.description or "").split()).replace("|", "\\|")


def render() -> str:
    """The whole of docs/configuration.md."""
    fields = Settings.model_fields
    parts = [INTRO]
    for title, names in sections().items():
        parts.append(group(title, [(PREFIX + name.upper(), fields[name]) for name in names]))
    for name, field in fields.items():
        if model := nested_model(field):
            env = f"{PREFIX}{name.upper()}{NESTED}"
            rows = [(env + key.upper(), inner) for key, inner in model.model_fields.items()]
            parts.append(group(f"`{env}*`", rows, model.__doc__ or ""))
    for name, field in fields.items():
        if model := listed_model(field):
            rows = list(model.model_fields.items())
            heading = f"Each entry of `{PREFIX}{name.upper()}`"
            parts.append(group(heading, rows, model.__doc__ or "", column="key"))
    return "\n".join(parts)


def group(
    heading: str, rows: list[tuple[str, FieldInfo]], about: str = "", column: str = "variable"
) -> str:
    """One group: a heading, what the group is, and a row per setting."""
    lines = [f"## {heading}", ""]
    if about:
        lines += [" ".join(about.split()), ""]
    lines += [f"| {column} | default | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {default_of(field)} | {meaning(field)} |" for name, field in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    REFERENCE.write_text(render())
    print(f"wrote {REFERENCE}")


if __name__ == "__main__":
    main()

"""docs/configuration.md is what the settings object says: regenerated, it does not change."""

from __future__ import annotations

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from core.config_reference import REFERENCE, listed_model, nested_model, render, sections
from core.settings import Settings, WorkerSettings


def described_models() -> list[type[BaseModel]]:
    """`Settings` and every model a setting is made of (nested groups, JSON list entries)."""
    models: list[type[BaseModel]] = [Settings]
    for field in Settings.model_fields.values():
        model = nested_model(field) or listed_model(field)
        if model is not None:
            models.append(model)
    return models


def test_the_committed_reference_is_what_the_settings_generate() -> None:
    assert REFERENCE.read_text() == render(), "docs/configuration.md is stale: run make config-docs"


def test_every_setting_says_what_it_means() -> None:
    """Each field has a description (a nested group: its model's docstring)."""
    undescribed = [
        f"{model.__name__}.{name}"
        for model in described_models()
        for name, field in model.model_fields.items()
        if not description_of(field).strip()
    ]
    assert undescribed == []


def description_of(field: FieldInfo) -> str:
    group = nested_model(field)
    return (group.__doc__ if group else field.description) or ""


def test_every_variable_is_in_the_reference() -> None:
    grouped = [name for names in sections().values() for name in names]
    nested = [name for name, field in Settings.model_fields.items() if nested_model(field)]
    assert sorted(grouped + nested) == sorted(Settings.model_fields)
    text = render()
    for name in grouped:
        assert f"`GATEWAY_{name.upper()}`" in text
    for key in WorkerSettings.model_fields:
        assert f"`GATEWAY_WORKER__{key.upper()}`" in text


def test_secrets_are_listed_without_their_values() -> None:
    assert Settings.model_fields["upstream_api_key"].default.get_secret_value() == "offline"
    row = next(line for line in render().splitlines() if "GATEWAY_UPSTREAM_API_KEY" in line)
    assert "offline" not in row and "(secret)" in row

"""The compatibility suite: the gateway against model servers nobody on the project wrote.

`make compat` starts llama.cpp's server and runs this folder with `COMPAT_LLAMA_URL` set;
without it (a plain `pytest`, `make test`) every test here is skipped before any fixture
starts a process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LLAMA_URL_VARIABLE = "COMPAT_LLAMA_URL"
HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "compat: runs against a real model server that `make compat` starts"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(LLAMA_URL_VARIABLE):
        return
    skip = pytest.mark.skip(reason=f"{LLAMA_URL_VARIABLE} is not set: `make compat` runs these")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)

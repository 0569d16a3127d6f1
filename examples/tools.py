"""The default tool module: the first version's tool and a few realistic ones.

Under the default policy `getStringLength`, `writeNote` and `deleteNote` ask for
approval and `lookupCapital` (marked read-only) runs without asking.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from langchain_core.tools import BaseTool, tool

NOTES_DIR = Path(tempfile.gettempdir()) / "approval-gateway-notes"
_CAPITALS = {"france": "Paris", "germany": "Berlin", "japan": "Tokyo", "kenya": "Nairobi"}


@tool
def getStringLength(text: str) -> int:  # noqa: N802 - the first version's name, kept for its clients
    """Return the number of characters in a text."""
    return len(text)


@tool
def lookupCapital(country: str) -> str:  # noqa: N802
    """Look up the capital city of a country."""
    return _CAPITALS.get(country.strip().lower(), f"unknown country {country!r}")


@tool
def writeNote(name: str, content: str) -> str:  # noqa: N802
    """Write a text note to the notes folder, replacing one with the same name."""
    path = _note_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return f"wrote {len(content)} characters to {path.name}"


@tool
def deleteNote(name: str) -> str:  # noqa: N802
    """Delete a note from the notes folder."""
    path = _note_path(name)
    if not path.exists():
        raise FileNotFoundError(f"no note named {name!r}")
    path.unlink()
    return f"deleted {path.name}"


def _note_path(name: str) -> Path:
    # Names are confined to one folder: no separators, no dot-files.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise ValueError(f"invalid note name {name!r}")
    return NOTES_DIR / name


lookupCapital.metadata = {"read_only": True, "idempotent": True}
TOOLS: list[BaseTool] = [getStringLength, lookupCapital, writeNote, deleteNote]

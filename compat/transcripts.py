"""Recorded upstream transcripts: one request to a real model server and its raw answer.

Each is a JSON file in `tests/fixtures/llamacpp/` (`python -m compat.run --record` writes
them): the request as sent, the status, the headers and the exact body bytes, so the wire
adapter's unit tests can replay what llama.cpp's server really says.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.processes import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "llamacpp"


@dataclass(frozen=True)
class Transcript:
    """One request and the raw answer to it."""

    scenario: str
    description: str
    request: dict[str, Any]
    status: int
    headers: dict[str, str]
    body: bytes
    server: dict[str, str]
    """What answered: package versions, model file, chat format."""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def to_json(self) -> bytes:
        try:
            body: dict[str, str] = {"body_text": self.body.decode("utf-8")}
        except UnicodeDecodeError:
            body = {"body_base64": base64.b64encode(self.body).decode()}
        document = {
            "scenario": self.scenario,
            "description": self.description,
            "server": self.server,
            "request": self.request,
            "status": self.status,
            "content_type": self.content_type,
            "headers": self.headers,
            **body,
        }
        return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Transcript:
        document = orjson.loads(raw)
        if "body_text" in document:
            body = document["body_text"].encode("utf-8")
        else:
            body = base64.b64decode(document["body_base64"])
        return cls(
            scenario=document["scenario"],
            description=document["description"],
            request=document["request"],
            status=document["status"],
            headers=document["headers"],
            body=body,
            server=document["server"],
        )


def load(scenario: str, folder: Path = FIXTURES) -> Transcript:
    """The recorded transcript of `scenario` (its file name without `.json`)."""
    return Transcript.from_json((folder / f"{scenario}.json").read_bytes())


def save(transcript: Transcript, folder: Path = FIXTURES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{transcript.scenario}.json"
    path.write_bytes(transcript.to_json())
    return path

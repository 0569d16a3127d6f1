"""`make compat`: start llama.cpp's server, run the compatibility tests against it, stop it.

    python -m compat.run [pytest arguments]   # tests/compat with COMPAT_LLAMA_URL set
    python -m compat.run --record             # re-record tests/fixtures/llamacpp instead

Needs `.venv-compat` (`make compat-deps`); the server's log goes to `.run/compat/`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType

from compat.llama import LlamaServer
from compat.record import record
from tests.processes import ROOT


def main(argv: list[str]) -> int:
    # A SIGTERM (a CI timeout, a killed make) still stops the server through `finally`.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    # A background job starts with SIGINT ignored, and so would pytest; with a handler here
    # it starts with the default, and the interrupt forwarded to it is heard.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = LlamaServer()
    print(f"llama.cpp server: {' '.join(server.process.argv)}", flush=True)
    print(f"its log: {server.process.log_path}", flush=True)
    try:
        server.start()
        if argv[:1] == ["--record"]:
            record(server.url, server.model)
            return 0
        return _pytest(server.url, argv)
    finally:
        server.stop()


def _pytest(llama_url: str, argv: list[str]) -> int:
    env = {**os.environ, "COMPAT_LLAMA_URL": llama_url}
    command = [sys.executable, "-m", "pytest", "tests/compat", "-q", *argv]
    tests = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        return tests.wait()
    except SystemExit:
        # Stopped by a signal: an interrupt lets pytest stop the gateways it started.
        tests.send_signal(signal.SIGINT)
        _wait_or_kill(tests)
        raise
    except KeyboardInterrupt:
        _wait_or_kill(tests)  # a terminal's Ctrl-C reached pytest too
        raise


def _wait_or_kill(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

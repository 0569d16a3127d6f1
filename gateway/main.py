"""`gateway` command: serve one replica with uvicorn."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from core.settings import Settings
from gateway.app import create_app


def main() -> None:
    """Parse `--host/--port/--workers`-free flags, then serve."""
    parser = argparse.ArgumentParser(description="Approval gateway replica")
    parser.add_argument("--host", help="override GATEWAY_HOST")
    parser.add_argument("--port", type=int, help="override GATEWAY_PORT")
    args = parser.parse_args()
    settings = Settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()

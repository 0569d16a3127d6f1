"""The baselines the gateway is measured against, served by uvicorn exactly as a replica is.

- `POST /relay/chat/completions`: reads the upstream stream with httpx and writes each
  event on as SSE, and does nothing else (P1, the least a relay can do in Python).
- `POST /held`: a bare Starlette SSE stream that sends one event, then a heartbeat
  comment every `--heartbeat` seconds until the client leaves (P4, the least a held
  stream can cost).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def create_app(upstream: str, heartbeat_s: float) -> Starlette:
    client = httpx.AsyncClient(
        base_url=upstream.rstrip("/") + "/",
        timeout=60,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
    )

    async def relay(request: Request) -> Response:
        body = await request.body()
        upstream_request = client.build_request(
            "POST",
            "chat/completions",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        response = await client.send(upstream_request, stream=True)

        async def events() -> AsyncIterator[bytes]:
            buffer = b""
            try:
                async for block in response.aiter_raw():
                    *complete, buffer = (buffer + block).split(b"\n\n")
                    for event in complete:
                        yield event + b"\n\n"
            finally:
                await response.aclose()

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def held(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            yield b'id: 1\ndata: {"held":true}\n\n'
            while True:
                await asyncio.sleep(heartbeat_s)
                yield b": heartbeat\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    routes = [
        Route("/relay/chat/completions", relay, methods=["POST"]),
        Route("/held", held, methods=["POST"]),
        Route("/health", health),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default="http://127.0.0.1:8001/v1")
    parser.add_argument("--heartbeat", type=float, default=15.0)
    args = parser.parse_args()
    app = create_app(args.upstream, args.heartbeat)
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", loop="uvloop", http="httptools"
    )


if __name__ == "__main__":
    main()

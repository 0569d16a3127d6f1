"""`GET /v1/models` and `GET /v1/models/{id}`: what model pickers and `models.list()` ask.

The list is `GATEWAY_MODELS` when set; otherwise the upstream's own list (cached for a
minute), and the default model when the upstream has none to give.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from core.errors import NotFound, UpstreamError
from gateway.auth import principal_of
from gateway.conversation import Engine

CACHE_S = 60.0


class ModelList:
    """The model ids this gateway offers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cached: list[str] = []
        self._until = 0.0

    async def ids(self) -> list[str]:
        settings = self.engine.settings
        if settings.models:
            return list(settings.models)
        if time.monotonic() < self._until:
            return self._cached
        try:
            ids = await self.engine.upstream.list_models()
        except UpstreamError:
            ids = []
        self._cached = ids or [settings.upstream_model]
        self._until = time.monotonic() + CACHE_S
        return self._cached


def _model(model_id: str, created: int) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "approval-gateway"}


async def list_models(request: Request) -> JSONResponse:
    principal_of(request)  # any known key
    models: ModelList = request.app.state.models
    created = int(request.app.state.started_at)
    data = [_model(model_id, created) for model_id in await models.ids()]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> JSONResponse:
    principal_of(request)
    models: ModelList = request.app.state.models
    model_id = request.path_params["model_id"]
    if model_id not in await models.ids():
        raise NotFound(f"the model {model_id!r} does not exist", "model")
    return JSONResponse(_model(model_id, int(request.app.state.started_at)))

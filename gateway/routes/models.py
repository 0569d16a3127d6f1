"""`GET /v1/models` and `GET /v1/models/{id}`: what model pickers and `models.list()` ask.

The list is `GATEWAY_MODELS` when set; otherwise the upstream's own list (cached for a
minute), and the default model when the upstream has none to give.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from core.errors import NotFound, UpstreamError
from gateway.auth import Principal
from gateway.openapi import Operation, Param, Reply
from gateway.replica import Replica

CACHE_S = 60.0


class ModelList:
    """The model ids this gateway offers."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self._cached: list[str] = []
        self._until = 0.0

    async def ids(self) -> list[str]:
        settings = self.replica.settings
        if settings.models:
            return list(settings.models)
        if time.monotonic() < self._until:
            return self._cached
        try:
            ids = await self.replica.upstream.list_models()
        except UpstreamError:
            ids = []
        self._cached = ids or [settings.upstream_model]
        self._until = time.monotonic() + CACHE_S
        return self._cached


class ModelCard(BaseModel):
    """One model, as OpenAI's `model` object."""

    id: str
    object: Literal["model"] = "model"
    created: int
    """When this replica started (unix seconds)."""
    owned_by: Literal["approval-gateway"] = "approval-gateway"


class ModelCards(BaseModel):
    """`GET /v1/models`: OpenAI's list of models."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


async def list_models(request: Request, caller: Principal) -> JSONResponse:
    """Guarded: any known key."""
    models: ModelList = request.app.state.models
    created = int(request.app.state.started_at)
    data = [ModelCard(id=model_id, created=created) for model_id in await models.ids()]
    return JSONResponse(ModelCards(data=data).model_dump())


async def get_model(request: Request, caller: Principal) -> JSONResponse:
    """Guarded: any known key."""
    models: ModelList = request.app.state.models
    model_id = request.path_params["model_id"]
    if model_id not in await models.ids():
        raise NotFound(f"the model {model_id!r} does not exist", "model")
    created = int(request.app.state.started_at)
    return JSONResponse(ModelCard(id=model_id, created=created).model_dump())


OPERATIONS = (
    Operation(
        "GET",
        "/v1/models",
        "The models this gateway offers",
        {200: Reply("OpenAI's list of models", ModelCards)},
        description="`GATEWAY_MODELS` when set; otherwise the upstream's list (cached for a "
        "minute), or the default model when the upstream has none to give. Any known key.",
    ),
    Operation(
        "GET",
        "/v1/models/{model_id:path}",
        "One model the gateway offers",
        {200: Reply("The model", ModelCard)},
        params=(Param("model_id", "A model id from the list (it may hold `/`)", "path"),),
        errors=(NotFound,),
    ),
)

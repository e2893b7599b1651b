"""`GET /v1/models` and `GET /v1/models/{id}`: OpenAI's model objects plus what this node knows:
context size, quant type, GPU type and the price per 1M tokens here."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from node.api.routing import authenticate
from node.engine.interface import ModelInfo
from node.service import NodeService


def model_card(service: NodeService, info: ModelInfo) -> dict[str, Any]:
    price = service.price(info.id)
    try:
        created = int(info.path.stat().st_mtime)
    except OSError:
        created = 0
    return {
        "id": info.id,
        "object": "model",
        "created": created,
        "owned_by": "llm-node",
        "aliases": list(info.aliases),
        "type": "embeddings" if info.embeddings else "generation",
        "context_length": info.n_ctx_per_seq,
        "n_ctx": info.n_ctx,
        "parallel": info.parallel,
        "quant_type": info.quant_type,
        "n_params": info.n_params,
        "size_bytes": info.size_bytes,
        "gpu_type": service.gpu.type,
        "gpu_name": service.gpu.name,
        "price": None
        if price is None
        else {
            "prompt_per_1m": format(price.prompt_per_1m, "f"),
            "completion_per_1m": format(price.completion_per_1m, "f"),
            "currency": price.currency,
        },
    }


async def list_models(request: Request) -> Response:
    service, _key = authenticate(request)
    cards = [model_card(service, info) for info in service.models()]
    return JSONResponse({"object": "list", "data": cards})


async def get_model(request: Request) -> Response:
    service, _key = authenticate(request)
    info = service.model(request.path_params["model_id"])
    return JSONResponse(model_card(service, info))

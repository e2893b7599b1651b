"""`GET /v1/models` and `GET /v1/models/{id}`: OpenAI's model objects plus what this node knows:
context size, quant type, GPU type and the price per 1M tokens here."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from node.api.openai.responses import ModelCard, ModelList, ModelPrice
from node.api.routing import authenticate
from node.engine.interface import ModelInfo
from node.service import NodeService


def model_card(service: NodeService, info: ModelInfo) -> ModelCard:
    price = service.price(info.id)
    try:
        created = int(info.path.stat().st_mtime)
    except OSError:
        created = 0
    return ModelCard(
        id=info.id,
        created=created,
        aliases=list(info.aliases),
        type="embeddings" if info.embeddings else "generation",
        context_length=info.n_ctx_per_seq,
        n_ctx=info.n_ctx,
        parallel=info.parallel,
        quant_type=info.quant_type,
        n_params=info.n_params,
        size_bytes=info.size_bytes,
        gpu_type=service.gpu.type,
        gpu_name=service.gpu.name,
        price=None
        if price is None
        else ModelPrice.model_validate(
            {k: v for k, v in price.to_json().items() if k not in ("model", "gpu_type")}
        ),
    )


async def list_models(request: Request) -> Response:
    service, _key = authenticate(request)
    cards = [model_card(service, info) for info in service.models()]
    return JSONResponse(ModelList(data=cards).model_dump(mode="json"))


async def get_model(request: Request) -> Response:
    service, _key = authenticate(request)
    info = service.model(request.path_params["model_id"])
    return JSONResponse(model_card(service, info).model_dump(mode="json"))

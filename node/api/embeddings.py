"""`POST /v1/embeddings`: one vector per input, as floats or base64 float32 (OpenAI's format)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from node.api.context import request_id_of
from node.api.errors import context_overflow, invalid
from node.api.protocol import EmbeddingRequest
from node.api.routing import authenticate, read_body
from node.engine.interface import ContextOverflow
from node.service import Admission


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


async def embeddings(request: Request) -> Response:
    service, key = authenticate(request)
    body = EmbeddingRequest.model_validate_json(await read_body(request))
    engine = service.embedder(body.model)
    if body.dimensions is not None and body.dimensions != engine.info.n_embd:
        raise invalid(
            f"This model produces {engine.info.n_embd} dimensions; it cannot shorten them.",
            "dimensions",
            "invalid_value",
        )
    admission = Admission(request_id_of(request.scope), key, "embeddings", body.user)
    try:
        result, bill = await service.embed(admission, engine, body.texts())
    except ContextOverflow as exc:
        raise context_overflow(exc, "input") from None
    usage: dict[str, Any] = {
        "prompt_tokens": result.prompt_tokens,
        "total_tokens": result.prompt_tokens,
    }
    if bill.priced:
        usage["cost"] = format(bill.cost, "f")
        usage["currency"] = bill.currency
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(result.vectors)
    ]
    return JSONResponse({"object": "list", "data": data, "model": engine.info.id, "usage": usage})

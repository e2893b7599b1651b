"""`POST /v1/embeddings`: one vector per input (text or token ids), as floats or base64
float32 (OpenAI's format)."""

from __future__ import annotations

import base64

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from node.api.context import request_id_of
from node.api.errors import context_overflow, invalid
from node.api.openai.protocol import EmbeddingRequest
from node.api.openai.responses import Embedding, EmbeddingList, EmbeddingUsage
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
        result, bill = await service.embed(admission, engine, body.inputs())
    except ContextOverflow as exc:
        raise context_overflow(exc, "input") from None
    usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    if bill.priced:
        usage.cost = format(bill.cost, "f")
        usage.currency = bill.currency
    data = [
        Embedding(index=i, embedding=_encode(v, body.encoding_format))
        for i, v in enumerate(result.vectors)
    ]
    answer = EmbeddingList(data=data, model=engine.info.id, usage=usage)
    return JSONResponse(answer.model_dump(mode="json"))

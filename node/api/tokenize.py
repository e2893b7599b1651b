"""`POST /tokenize` and `POST /detokenize`, in llama-server's shapes.

    /tokenize   {"content": str, "add_special": false, "with_pieces": false, "model"?}
                -> {"tokens": [id, ...]} or, with pieces, [{"id": id, "piece": str | [bytes]}]
    /detokenize {"tokens": [id, ...], "model"?} -> {"content": str}

`model` (a node extension; llama-server serves one model) defaults to the first generation
model. Special-token text (`<|im_start|>`) is parsed into its token and detokenized back, so
text round-trips. Unmetered (no generation), but a key is required like every model route.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from node.api.errors import register_request_models
from node.api.openai.protocol import _Body, integer
from node.api.routing import authenticate, read_body
from node.engine.interface import GenerationEngine
from node.service import ModelNotFound, NodeService, RejectedByModel
from node.service.node import check_token_ids

MAX_DETOKENIZE = 1_000_000


class TokenizeRequest(_Body):
    content: str
    add_special: bool = False
    with_pieces: bool = False
    model: str | None = Field(default=None, min_length=1, description="Default: the first model.")


class DetokenizeRequest(_Body):
    tokens: Annotated[list[integer(ge=0)], Field(max_length=MAX_DETOKENIZE)]
    model: str | None = Field(default=None, min_length=1, description="Default: the first model.")


register_request_models(TokenizeRequest, DetokenizeRequest)


def _engine(service: NodeService, name: str | None) -> GenerationEngine:
    if name is not None:
        return service.generator(name)
    for info in service.models():
        if not info.embeddings:
            return service.generator(info.id)
    raise ModelNotFound("This node serves no generation model.")


def _piece(data: bytes) -> str | list[int]:
    """llama-server: the piece as text when it is valid UTF-8, else its bytes."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)


async def tokenize(request: Request) -> Response:
    service, _key = authenticate(request)
    body = TokenizeRequest.model_validate_json(await read_body(request))
    engine = _engine(service, body.model)
    try:
        tokens = engine.tokenize(body.content, body.add_special) if body.content else []
    except ValueError as exc:
        raise RejectedByModel(f"the content cannot be tokenized: {exc}", "content") from None
    if not body.with_pieces:
        return JSONResponse({"tokens": tokens})
    pieces = [{"id": t, "piece": _piece(engine.piece(t, True))} for t in tokens]
    return JSONResponse({"tokens": pieces})


async def detokenize(request: Request) -> Response:
    service, _key = authenticate(request)
    body = DetokenizeRequest.model_validate_json(await read_body(request))
    engine = _engine(service, body.model)
    check_token_ids(body.tokens, engine.info, "tokens")
    return JSONResponse({"content": engine.detokenize(body.tokens, True)})

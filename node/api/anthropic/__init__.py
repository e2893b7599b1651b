"""The Anthropic Messages dialect (`POST /v1/messages`, `/v1/messages/count_tokens`): content
blocks in and out over the same metered generation as chat, errors in Anthropic's envelope
(`node.api.envelopes`), keys by `x-api-key` or `Authorization: Bearer`."""

from starlette.routing import Route

from node.api.anthropic.protocol import CountTokensRequest, MessagesRequest
from node.api.anthropic.render import count_tokens, messages
from node.api.errors import register_request_models

register_request_models(MessagesRequest, CountTokensRequest)

ROUTES = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]

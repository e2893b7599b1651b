"""The OpenAI Responses API dialect (`POST /v1/responses`), stateless: request items in,
output items out, over the same metered generation as chat (`node.api.lifecycle`)."""

from starlette.routing import Route

from node.api.errors import register_request_models
from node.api.responses.protocol import ResponsesRequest
from node.api.responses.render import responses

register_request_models(ResponsesRequest)

ROUTES = [Route("/v1/responses", responses, methods=["POST"])]

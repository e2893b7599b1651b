"""The OpenAI dialect: chat completions, completions, embeddings and models.

Each endpoint keeps three roles apart: its request model (`protocol`, `chat_protocol`), its
response objects (`responses`) and renderer, and a thin route. The request lifecycle (meter,
disconnect, cancel) is shared by every dialect: `node.api.lifecycle`.
"""

from starlette.routing import Route

from node.api.errors import register_request_models
from node.api.openai import chat, completions, embeddings, models
from node.api.openai.chat_protocol import ChatCompletionRequest
from node.api.openai.protocol import CompletionRequest, EmbeddingRequest

register_request_models(ChatCompletionRequest, CompletionRequest, EmbeddingRequest)

ROUTES = [
    Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
    Route("/v1/completions", completions.completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings.embeddings, methods=["POST"]),
    Route("/v1/models", models.list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", models.get_model, methods=["GET"]),
]

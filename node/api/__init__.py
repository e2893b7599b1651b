"""The OpenAI-compatible HTTP layer: Starlette routes over `node.service`; no SQLite here."""

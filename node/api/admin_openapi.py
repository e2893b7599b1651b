"""The admin API's part of `/openapi.json`: paths and request bodies (from `node.api.admin`)."""

from __future__ import annotations

from typing import Any

from node.api.admin import BODIES

_REF = "#/components/schemas/{model}"
_ERRORS = {
    "400": "Invalid request; `param` names the bad field or query parameter",
    "401": "Missing, unknown, deleted or expired API key",
    "403": "`permission_error`: the key is not an ADMIN key",
    "404": "No such key (`key_not_found`)",
}
_USAGE_QUERY = ("since", "until", "org", "key", "model", "currency", "by")
_REQUESTS_QUERY = ("since", "until", "key", "status", "limit")


def _op(
    summary: str,
    ok: str,
    body: str | None = None,
    query: tuple[str, ...] = (),
    status: str = "200",
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "tags": ["admin"],
        "security": [{"bearer": []}],
        "responses": {status: {"description": ok}},
    }
    for status, text in _ERRORS.items():
        op["responses"][status] = {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
        }
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=body)}}},
        }
    if query:
        op["parameters"] = [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in query
        ]
    return op


def _path_params(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in names
    ]


def admin_schemas() -> list[type]:
    return list(BODIES)


def admin_paths() -> dict[str, Any]:
    key = _path_params("key_id")
    return {
        "/admin/keys": {
            "post": _op(
                "Create a key; the only response that shows its secret",
                "The key with its `secret`",
                "NewKey",
                status="201",
            ),
            "get": _op("List keys with limits, budget, spent and remaining", "A list of keys"),
        },
        "/admin/keys/{key_id}": {
            "get": {**_op("One key", "The key"), "parameters": key},
            "patch": {
                **_op("Change limits, budget, comment, org, expiry", "The key", "KeyChanges"),
                "parameters": key,
            },
            "delete": {
                **_op("Delete a key (fails from its next request)", "Deleted"),
                "parameters": key,
            },
        },
        "/admin/prices": {
            "get": _op(
                "Prices in force (`?history=true`: all periods)",
                "A list of prices",
                query=("history",),
            ),
        },
        "/admin/prices/{model}/{gpu_type}": {
            "put": {
                **_op("Set a price for requests admitted from now on", "The price", "PriceBody"),
                "parameters": _path_params("model", "gpu_type"),
            }
        },
        "/admin/usage": {
            "get": _op("`billing status --json`", "Usage per group and total", query=_USAGE_QUERY)
        },
        "/admin/requests": {
            "get": _op("`billing requests --json`", "Meter rows", query=_REQUESTS_QUERY)
        },
        "/admin/orgs": {"get": _op("Orgs with budget, spent and remaining", "A list of orgs")},
        "/admin/orgs/{org}": {
            "get": {**_op("One org", "The org"), "parameters": _path_params("org")},
            "put": {
                **_op("Set or clear (`null`) the org's budget", "The org", "OrgBody"),
                "parameters": _path_params("org"),
            },
        },
    }

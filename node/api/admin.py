"""The admin HTTP API (`ADMIN` keys; `node.api.auth` enforces the level): keys, prices, usage,
request rows and org budgets, in the same JSON as the CLI's `--json`.

Every meter call blocks (a read, or a write waited for), so it runs on a worker thread.
Bad input is a 400 naming the param; an unknown key or org a 404.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from node.api.errors import ApiError, invalid
from node.fleet.billing import GROUPS as FLEET_GROUPS
from node.meter import Budget, Filters, Limits, Meter, MixedCurrencies, MoneyError
from node.meter.billing import GROUPS
from node.meter.budgets import parse_budget
from node.meter.keys import MAX_DAYS
from node.meter.money import parse_currency, parse_price
from node.meter.times import parse_moment
from node.meter.usage import STATUSES

T = TypeVar("T")
Positive = Field(default=None, gt=0, le=10**12)


class BudgetBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: StrictStr | StrictInt = Field(description='Exact decimal string, e.g. "25.50".')
    period: Literal["day", "week", "month", "total"]

    def parsed(self) -> Budget:
        return parse_budget(self.amount, self.period)


class KeyChanges(BaseModel):
    """PATCH /admin/keys/{id}: a field left out keeps its value; `null` clears it."""

    model_config = ConfigDict(extra="forbid")
    comment: StrictStr | None = None
    org: StrictStr | None = None
    expires_in_days: float | None = Field(default=None, gt=0, le=MAX_DAYS, allow_inf_nan=False)
    rpm: StrictInt | None = Positive
    tpm: StrictInt | None = Positive
    max_parallel: StrictInt | None = Positive
    budget: BudgetBody | None = None


class NewKey(KeyChanges):
    """POST /admin/keys."""

    level: Literal["LLM", "ADMIN"]


class PriceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr | StrictInt = Field(description="Per 1M prompt tokens, up to 6 decimals.")
    completion: StrictStr | StrictInt = Field(description="Per 1M completion tokens.")
    cached: StrictStr | StrictInt | None = Field(
        default=None,
        description="Per 1M prompt tokens restored from the prompt cache (default: the prompt"
        " price).",
    )
    currency: StrictStr = "PLN"


class OrgBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget: BudgetBody | None


def _meter(request: Request) -> Meter:
    return request.app.state.service.meter


def _config(request: Request) -> Any:
    """Where key, org and price changes go and usage reports come from: the meter, or in fleet
    mode the fleet database (`node.fleet.store.FleetConfig`, the same methods): changes reach
    every node's copy from there, and reports cover every node's exported rows."""
    return getattr(request.app.state, "config", None) or _meter(request)


async def _run(func: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(func, *args)


async def _body(request: Request, model: type[BaseModel]) -> Any:
    return model.model_validate_json(await request.body())


def _budget(body: BudgetBody | None) -> Budget | None:
    try:
        return None if body is None else body.parsed()
    except (MoneyError, ValueError) as exc:
        raise invalid(f"Invalid value for 'budget.amount': {exc}.", "budget.amount") from None


def _not_found(what: str, name: str, code: str) -> ApiError:
    return ApiError(404, f"No {what} {name!r}.", code=code)


# --- keys ------------------------------------------------------------------------------------


async def create_key(request: Request) -> Response:
    body: NewKey = await _body(request, NewKey)
    meter = _meter(request)
    key, secret = await _run(
        lambda: _config(request).create_key(
            body.level,
            comment=body.comment,
            org=body.org,
            expires_in_days=body.expires_in_days,
            limits=Limits(body.rpm, body.tpm, body.max_parallel),
            budget=_budget(body.budget),
        )
    )
    data = await _run(meter.key_json, key)
    return JSONResponse({"secret": secret, **data}, status_code=201)


async def list_keys(request: Request) -> Response:
    meter = _meter(request)
    keys = await _run(meter.list_keys)
    return JSONResponse({"object": "list", "data": [await _run(meter.key_json, k) for k in keys]})


async def get_key(request: Request) -> Response:
    meter = _meter(request)
    key_id = request.path_params["key_id"]
    key = await _run(meter.get_key, key_id)
    if key is None:
        raise _not_found("API key", key_id, "key_not_found")
    return JSONResponse(await _run(meter.key_json, key))


async def update_key(request: Request) -> Response:
    body: KeyChanges = await _body(request, KeyChanges)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    if "budget" in changes:
        changes["budget"] = _budget(body.budget)
    meter = _meter(request)
    key_id = request.path_params["key_id"]
    key = await _run(_config(request).update_key, key_id, changes)
    if key is None:
        raise _not_found("API key", key_id, "key_not_found")
    return JSONResponse(await _run(meter.key_json, key))


async def delete_key(request: Request) -> Response:
    key_id = request.path_params["key_id"]
    if not await _run(_config(request).delete_key, key_id):
        raise _not_found("API key", key_id, "key_not_found")
    return JSONResponse({"id": key_id, "deleted": True})


# --- prices ----------------------------------------------------------------------------------


async def list_prices(request: Request) -> Response:
    history = _flag(request, "history")
    periods = await _run(lambda: _meter(request).list_prices(history=history))
    return JSONResponse({"object": "list", "data": [p.to_json() for p in periods]})


async def set_price(request: Request) -> Response:
    body: PriceBody = await _body(request, PriceBody)
    model, gpu_type = request.path_params["model"], request.path_params["gpu_type"]
    for param, value in (
        ("prompt", body.prompt),
        ("completion", body.completion),
        ("cached", body.cached),
    ):
        try:
            if value is not None:
                parse_price(value, what=param)
        except MoneyError as exc:
            raise invalid(f"Invalid value for '{param}': {exc}.", param) from None
    try:
        currency = parse_currency(body.currency)
    except MoneyError as exc:
        raise invalid(f"Invalid value for 'currency': {exc}.", "currency") from None
    price = await _run(
        _config(request).set_price,
        model,
        gpu_type,
        body.prompt,
        body.completion,
        currency,
        body.cached,
    )
    return JSONResponse(price.to_json())


# --- usage and request rows ------------------------------------------------------------------


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise invalid(f"Invalid value for '{name}': expected true or false.", name)
    return value in ("true", "1")


def _moment(request: Request, name: str, *, end_of_day: bool = False) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        return parse_moment(text, end_of_day=end_of_day)
    except ValueError as exc:
        raise invalid(f"Invalid value for '{name}': {exc}.", name) from None


def _filters(request: Request, allowed: set[str]) -> Filters:
    unknown = set(request.query_params) - allowed
    if unknown:
        name = sorted(unknown)[0]
        raise invalid(f"Unknown query parameter '{name}'.", name)
    since, until = _moment(request, "since"), _moment(request, "until", end_of_day=True)
    if since is not None and until is not None and since >= until:
        raise invalid("'since' must be before 'until'.", "since")
    q = request.query_params
    currency = q.get("currency")
    if currency is not None:
        try:
            currency = parse_currency(currency)
        except MoneyError as exc:
            raise invalid(f"Invalid value for 'currency': {exc}.", "currency") from None
    status = q.get("status")
    if status is not None and status not in STATUSES:
        raise invalid(f"Invalid value for 'status': one of {', '.join(STATUSES)}.", "status")
    return Filters(
        since_us=since,
        until_us=until,
        org=q.get("org"),
        key_id=q.get("key"),
        model=q.get("model"),
        currency=currency,
        status=status,
    )


async def usage(request: Request) -> Response:
    """`billing status --json`: the same filters (`since`, `until`, `org`, `key`, `model`,
    `currency`) and grouping (`by`)."""
    filters = _filters(request, {"since", "until", "org", "key", "model", "currency", "by"})
    by = request.query_params.get("by", "key")
    groups = GROUPS if _config(request) is _meter(request) else FLEET_GROUPS
    if by not in groups:
        raise invalid(f"Invalid value for 'by': one of {', '.join(groups)}.", "by")
    try:
        report = await _run(_config(request).billing_status, filters, by)
    except MixedCurrencies as exc:
        raise invalid(str(exc), "currency") from None
    return JSONResponse(report)


async def requests(request: Request) -> Response:
    """`billing requests --json`: `since`, `until`, `key`, `status`, `limit` (default 100)."""
    filters = _filters(request, {"since", "until", "key", "status", "limit"})
    text = request.query_params.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= 10**9:
        raise invalid("Invalid value for 'limit': a whole number from 1.", "limit")
    rows = await _run(_config(request).billing_requests, filters, int(text))
    return JSONResponse(rows)


# --- orgs ------------------------------------------------------------------------------------


async def list_orgs(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": await _run(_meter(request).list_orgs)})


async def get_org(request: Request) -> Response:
    return JSONResponse(await _run(_meter(request).org_json, request.path_params["org"]))


async def set_org(request: Request) -> Response:
    body: OrgBody = await _body(request, OrgBody)
    org = request.path_params["org"]
    if not org.strip():
        raise invalid("The org name must not be empty.", "org")
    return JSONResponse(await _run(_config(request).set_org, org, _budget(body.budget)))


ROUTES = [
    Route("/admin/keys", create_key, methods=["POST"]),
    Route("/admin/keys", list_keys, methods=["GET"]),
    Route("/admin/keys/{key_id}", get_key, methods=["GET"]),
    Route("/admin/keys/{key_id}", update_key, methods=["PATCH"]),
    Route("/admin/keys/{key_id}", delete_key, methods=["DELETE"]),
    Route("/admin/prices", list_prices, methods=["GET"]),
    Route("/admin/prices/{model}/{gpu_type}", set_price, methods=["PUT"]),
    Route("/admin/usage", usage, methods=["GET"]),
    Route("/admin/requests", requests, methods=["GET"]),
    Route("/admin/orgs", list_orgs, methods=["GET"]),
    Route("/admin/orgs/{org}", get_org, methods=["GET"]),
    Route("/admin/orgs/{org}", set_org, methods=["PUT"]),
]

BODIES: list[type[BaseModel]] = [NewKey, KeyChanges, PriceBody, OrgBody]

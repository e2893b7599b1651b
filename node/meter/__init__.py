"""The meter: API keys, prices and one durable row per request, in SQLite (sqlite-utils).

No llama, no HTTP. `Meter` is the facade the service and the CLI use.
"""

from node.meter.billing import Filters, MixedCurrencies
from node.meter.budgets import Budget, Refusal
from node.meter.db import MeterUnavailable
from node.meter.keys import ApiKey, Limits
from node.meter.meter import Meter
from node.meter.money import MoneyError
from node.meter.prices import Price, PricePeriod
from node.meter.usage import Bill, Opened, RequestStart, UnknownRequest, Usage

__all__ = [
    "ApiKey",
    "Bill",
    "Budget",
    "Filters",
    "Limits",
    "Meter",
    "MeterUnavailable",
    "MixedCurrencies",
    "MoneyError",
    "Opened",
    "Price",
    "PricePeriod",
    "Refusal",
    "RequestStart",
    "UnknownRequest",
    "Usage",
]

"""The meter: API keys, prices and one durable row per request, in SQLite (sqlite-utils).

No llama, no HTTP. `Meter` is the facade the service and the CLI use.
"""

from node.meter.billing import Filters, MixedCurrencies
from node.meter.db import MeterUnavailable
from node.meter.keys import ApiKey
from node.meter.meter import Meter
from node.meter.money import MoneyError
from node.meter.prices import Price, PricePeriod
from node.meter.usage import Bill, RequestStart, UnknownRequest, Usage

__all__ = [
    "ApiKey",
    "Bill",
    "Filters",
    "Meter",
    "MeterUnavailable",
    "MixedCurrencies",
    "MoneyError",
    "Price",
    "PricePeriod",
    "RequestStart",
    "UnknownRequest",
    "Usage",
]

"""Composition: the one place the engine, the output processing and the meter meet.

`node` holds the service (models, meter, GPU: admission and metered work), `metered` the
lifecycle of one generation's meter row, `errors` what the service refuses.
"""

from node.admission import BudgetExceeded, RateLimited
from node.meter import MeterUnavailable
from node.service.admission import Admission, UsageObserver
from node.service.errors import AuthenticationFailed, ModelNotFound, NotReady, RejectedByModel
from node.service.metered import CHECKPOINT_EVERY, ChoiceEvent, MeteredGeneration
from node.service.node import NodeService

__all__ = [
    "CHECKPOINT_EVERY",
    "Admission",
    "AuthenticationFailed",
    "BudgetExceeded",
    "ChoiceEvent",
    "MeterUnavailable",
    "MeteredGeneration",
    "ModelNotFound",
    "NodeService",
    "NotReady",
    "RateLimited",
    "RejectedByModel",
    "UsageObserver",
]

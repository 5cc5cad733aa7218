"""Pure placement decisions: which cluster and pool take a whole gang, or why none can."""

from kaon.placement.decide import decide, plan
from kaon.placement.demand import gang_demand, preferences, replica_demand
from kaon.placement.health import HealthHistory
from kaon.placement.model import (
    GangDemand,
    Outcome,
    Placed,
    PoolOffer,
    Preference,
    Reservation,
    Unplaceable,
    Waiting,
)
from kaon.placement.serving import ServicePlan, place_service

__all__ = [
    "GangDemand",
    "HealthHistory",
    "Outcome",
    "Placed",
    "PoolOffer",
    "Preference",
    "Reservation",
    "ServicePlan",
    "Unplaceable",
    "Waiting",
    "decide",
    "gang_demand",
    "place_service",
    "plan",
    "preferences",
    "replica_demand",
]

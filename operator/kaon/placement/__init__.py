"""Pure placement decisions: which cluster and pool take a whole gang, or why none can."""

from kaon.placement.decide import decide, plan
from kaon.placement.demand import gang_demand, preferences
from kaon.placement.model import (
    GangDemand,
    Outcome,
    Placed,
    PoolOffer,
    Preference,
    Unplaceable,
    Waiting,
)

__all__ = [
    "GangDemand",
    "Outcome",
    "Placed",
    "PoolOffer",
    "Preference",
    "Unplaceable",
    "Waiting",
    "decide",
    "gang_demand",
    "plan",
    "preferences",
]

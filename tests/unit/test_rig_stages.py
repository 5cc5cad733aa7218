"""The rig's kwok Stages name the annotations and labels the rest of the code uses."""

from __future__ import annotations

from typing import Any

import yaml

from kaon.api.names import ATTEMPT_LABEL, RANK_LABEL
from kaon_rig.config import SIM_DURATION, SIM_EXIT_CODE, SIM_FAIL, SIM_MESSAGE, stages_text


def stage(name: str) -> dict[str, Any]:
    stages = {s["metadata"]["name"]: s for s in yaml.safe_load_all(stages_text())}
    return stages[name]


def test_simulated_exit_picks_the_worker_by_kaons_attempt_and_rank_labels() -> None:
    spec = stage("pod-sim-exit")["spec"]
    selector = " ".join(e["key"] for e in spec["selector"]["matchExpressions"])
    template = spec["next"]["statusTemplate"]
    for text in (selector, template):
        for name in (SIM_FAIL, SIM_EXIT_CODE, ATTEMPT_LABEL, RANK_LABEL):
            assert f'"{name}"' in text, name
    assert f'"{SIM_MESSAGE}"' in template
    assert (
        spec["delay"]["durationFrom"]["expressionFrom"]
        == f'.metadata.annotations["{SIM_DURATION}"]'
    )


def test_the_stages_cover_nodes_and_the_pod_lifecycle_from_ready_to_deletion() -> None:
    names = [s["metadata"]["name"] for s in yaml.safe_load_all(stages_text())]
    assert names == [
        "node-initialize",
        "node-heartbeat",
        "pod-ready",
        "pod-complete-job",
        "pod-sim-exit",
        "pod-delete",
    ]

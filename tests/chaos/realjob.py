"""One TrainingJob of a chaos scenario that really trains: a CNN on the rig's process-agent
pools, its checkpoints in the rig's S3 store. It starts in west-local (east-local is registered
only once it runs there), so losing west moves it; it must resume from its last committed step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from chaos.load import LONG, Load
from kaonrig import REPO, Jobs, Rig, kubectl, register_cluster
from storekit import manifest, manifest_step, store_secret

CLUSTERS = REPO / "examples" / "clusters"
EXAMPLE = REPO / "examples" / "trainingjobs" / "cnn-digits-s3.yaml"
EPOCHS = 200 if LONG else 120  # 23 steps an epoch (~0.6 s here); checkpoints every 20
STARTED_WITHIN_S = 300.0
ENDED_WITHIN_S = 600.0


@dataclass
class RealJob:
    kaon_rig: Rig
    jobs: Jobs
    namespace: str
    grace_s: int
    name: str = "real-0"
    committed: int = 0  # the newest committed step when its member was lost
    resumed: int = 0  # status.progress.resumedFromStep at the end
    registered: list[str] = field(default_factory=list)

    def start(self, load: Load) -> None:
        """Registers west-local and creates the job; counted in the load's gang sizes."""
        self.secret = store_secret(self.kaon_rig, self.namespace)
        self.registered.append(register_cluster(self.kaon_rig, CLUSTERS / "local.yaml"))
        spec: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())["spec"]
        spec["training"]["epochs"] = EPOCHS
        spec["runPolicy"]["failover"]["graceSeconds"] = self.grace_s
        self.jobs.create(self.namespace, self.name, spec)
        load.workers[self.name] = spec["workers"]

    def wait_checkpointed(self, at_least: int = 20) -> None:
        """Running in west-local with a committed checkpoint; then east-local may take it."""
        self.jobs.wait(
            self.namespace,
            self.name,
            lambda j: (
                (j.get("status") or {}).get("state") == "Running"
                and manifest_step(self.secret, j) >= at_least
            ),
            f"running, a checkpoint at step {at_least} or later committed",
            STARTED_WITHIN_S,
        )
        self.registered.append(register_cluster(self.kaon_rig, CLUSTERS / "local-east.yaml"))

    def note_committed(self) -> None:
        """Called once the member is lost: nothing of it commits after."""
        self.committed = manifest_step(self.secret, self.jobs.get(self.namespace, self.name))

    def check(self) -> list[str]:
        """Once the job ended: what broke the invariants of a resumed job."""
        job = self.jobs.wait(
            self.namespace,
            self.name,
            lambda j: (j.get("status") or {}).get("state") in ("Succeeded", "Failed"),
            "ended",
            ENDED_WITHIN_S,
        )
        status = self.final = job["status"]
        problems = []
        if status["state"] != "Succeeded":
            problems.append(f"{self.name}: {status['state']}, expected Succeeded: {status}")
        if status.get("failovers", 0) < 1 or status["placement"]["cluster"] != "east-local":
            problems.append(f"{self.name}: did not move to east-local: {status}")
        resumed = self.resumed = int((status.get("progress") or {}).get("resumedFromStep", 0))
        if not resumed >= self.committed > 0:
            problems.append(
                f"{self.name}: resumed from step {resumed}, its last committed step was "
                f"{self.committed}"
            )
        if manifest(self.secret, job).get("attempt") != status["attempt"]:
            problems.append(f"{self.name}: the store's manifest is not the current attempt's")
        return problems

    def stop(self) -> None:
        for name in self.registered:
            kubectl(self.kaon_rig, "delete", "computecluster", name, "--wait=true")

"""Which model an InferenceService serves: a URI as given, or a TrainingJob's artifact once the
job has succeeded onto a claim a server can mount."""

from __future__ import annotations

from kaon.api.inferenceservice import ModelSource, ResolvedModel
from kaon.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from kaon.builders.names import job_output_path

ModelProblem = tuple[str, str]  # (reason, message)
JobFacts = tuple[TrainingJobSpec, TrainingJobStatus]


def resolve_model(source: ModelSource, job: JobFacts | None) -> ResolvedModel | ModelProblem:
    """`job` is the referenced TrainingJob (None: absent or invalid); unused for a URI."""
    if source.uri:
        uri_claim, _, path = source.uri.removeprefix("pvc://").partition("/")
        return ResolvedModel(claim=uri_claim, path=path.strip("/"))
    assert source.training_job_ref is not None  # the CRD requires a URI or a reference
    name = source.training_job_ref.name
    if job is None:
        return "ModelNotFound", f"TrainingJob {name} does not exist (or is not valid)"
    spec, status = job
    claim = spec.checkpoint.claim_name
    if not claim:
        return "ModelNotServable", (
            f"TrainingJob {name} keeps its artifact on the node (no "
            "spec.checkpoint.claimName), so no server can mount it"
        )
    if status.state != "Succeeded":
        percent = f", {status.progress.percent}%" if status.progress else ""
        return "ModelNotReady", f"TrainingJob {name} is {status.state}{percent}"
    return ResolvedModel(claim=claim, path=job_output_path(name))

"""Which model an InferenceService serves: a URI as given, or a TrainingJob's artifact once the
job has succeeded onto a claim a server can mount or into an S3 store it can read."""

from __future__ import annotations

from kaon.api.inferenceservice import ModelSource, ResolvedModel
from kaon.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from kaon.builders.names import job_output_path

ModelProblem = tuple[str, str]  # (reason, message)
JobFacts = tuple[TrainingJobSpec, TrainingJobStatus]


def resolve_model(source: ModelSource, job: JobFacts | None) -> ResolvedModel | ModelProblem:
    """`job` is the referenced TrainingJob (None: absent or invalid); unused for a URI."""
    if source.in_store:
        return ResolvedModel(uri=source.uri, secret_ref=source.secret_ref)
    if source.uri:
        uri_claim, _, path = source.uri.removeprefix("pvc://").partition("/")
        return ResolvedModel(claim=uri_claim, path=path.strip("/"))
    assert source.training_job_ref is not None  # the CRD requires a URI or a reference
    name = source.training_job_ref.name
    if job is None:
        return "ModelNotFound", f"TrainingJob {name} does not exist (or is not valid)"
    spec, status = job
    checkpoint = spec.checkpoint
    if not checkpoint.claim_name and not checkpoint.location:
        return "ModelNotServable", (
            f"TrainingJob {name} keeps its artifact on the node (neither "
            "spec.checkpoint.claimName nor spec.checkpoint.location), so no server can read it"
        )
    if status.state != "Succeeded":
        percent = f", {status.progress.percent}%" if status.progress else ""
        return "ModelNotReady", f"TrainingJob {name} is {status.state}{percent}"
    if checkpoint.claim_name:
        return ResolvedModel(claim=checkpoint.claim_name, path=job_output_path(name))
    artifact = status.artifact or ""
    if not artifact.startswith("s3://"):
        where = f"status.artifact is {artifact}" if artifact else "there is no status.artifact"
        return "ModelNotServable", (
            f"TrainingJob {name} succeeded with spec.checkpoint.location set, but {where} "
            "(no s3:// model to serve)"
        )
    return ResolvedModel(uri=artifact, secret_ref=checkpoint.secret_ref)

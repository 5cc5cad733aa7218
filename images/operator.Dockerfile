# The kaon operator: `kaon run` against the hub, as the Helm chart's Deployment runs it.
# Build from the repository root (the image name and tag are the chart's operator.image):
#   docker build -f images/operator.Dockerfile -t ghcr.io/kaon-dev/kaon-operator:0.1.0 .
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kaon
WORKDIR /src
COPY pyproject.toml README.md ./
# Not rig/: the local rig (kaon_rig) is a development tool, never in an image.
COPY operator ./operator
COPY kernels ./kernels
# The control plane only: no torch (kaon imports kaon_kernels' config schema, never torch).
RUN /opt/kaon/bin/pip install .

FROM python:3.11.13-slim-bookworm
LABEL org.opencontainers.image.title="kaon-operator" \
      org.opencontainers.image.description="kaon: the operator for TrainingJobs and InferenceServices" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/kaon /opt/kaon
ENV PATH=/opt/kaon/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# The chart's securityContext runs it as 65532:65532 with a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["kaon"]
CMD ["run"]

# The kaon runtime, CPU: what every worker and model server pod runs
# (`python -m kaon_kernels.train`, `python -m kaon_kernels.serve`; the operator sets the command).
# Build from the repository root (the image name and tag are the chart's runtime.image):
#   docker build -f images/runtime-cpu.Dockerfile -t ghcr.io/kaon-dev/kaon-runtime:0.1.0 .
FROM python:3.11.13-slim-bookworm AS build
ARG TORCH_VERSION=2.6.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# torch's CPU build first: PyPI's default wheel carries the CUDA libraries (about 5 GB).
RUN python -m venv /opt/kaon \
    && /opt/kaon/bin/pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
# Not rig/: the local rig (kaon_rig) is a development tool, never in an image.
COPY operator ./operator
COPY kernels ./kernels
RUN /opt/kaon/bin/pip install ".[runtime]"

FROM python:3.11.13-slim-bookworm
LABEL org.opencontainers.image.title="kaon-runtime" \
      org.opencontainers.image.description="kaon's PyTorch runtime (CPU): training and V2 model serving" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/kaon /opt/kaon
# `python` in the pods' command is the venv's; caches go to the pods' writable /tmp.
ENV PATH=/opt/kaon/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /tmp
# The pods' securityContext (builders/worker.py) runs it as 65532:65532.
USER 65532:65532
CMD ["python", "-m", "kaon_kernels.train"]

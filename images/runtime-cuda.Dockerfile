# The kaon runtime, CUDA: as runtime-cpu.Dockerfile, with torch's CUDA 12.6 build, for GPU pools.
# Build from the repository root (the chart's runtime.image with the -cuda tag):
#   docker build -f images/runtime-cuda.Dockerfile -t ghcr.io/kaon-dev/kaon-runtime:0.1.0-cuda .
# The base flavor of nvidia/cuda suffices: torch's cu126 wheels bring cuBLAS, cuDNN and NCCL as
# pip packages; the image adds the CUDA compatibility layer and the NVIDIA container settings.
FROM nvidia/cuda:12.6.3-base-ubuntu24.04 AS build
ARG TORCH_VERSION=2.6.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# Ubuntu's python3 (3.12) is updated with the base image's tag; its version is not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/kaon \
    && /opt/kaon/bin/pip install --index-url https://download.pytorch.org/whl/cu126 "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
# Not rig/: the local rig (kaon_rig) is a development tool, never in an image.
COPY operator ./operator
COPY kernels ./kernels
RUN /opt/kaon/bin/pip install ".[runtime]"

FROM nvidia/cuda:12.6.3-base-ubuntu24.04
LABEL org.opencontainers.image.title="kaon-runtime" \
      org.opencontainers.image.description="kaon's PyTorch runtime (CUDA 12.6): training and V2 model serving" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/kaon /opt/kaon
ENV PATH=/opt/kaon/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /tmp
USER 65532:65532
CMD ["python", "-m", "kaon_kernels.train"]

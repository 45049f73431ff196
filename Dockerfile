# cmbflow, CPU by default. From the repository root:
#   docker build -t cmbflow:0.2.0 .
#   docker run --rm -v /data:/data cmbflow:0.2.0 /data/bids /data/derivatives/cmbflow participant --cores 8
# CUDA: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (the index matching the
# nodes' driver), then docker run --gpus all / apptainer run --nv. Podman, Apptainer, offline
# builds: docs/install.md.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS base
# Debian 12's Python 3.11 (cmbflow supports 3.11-3.13).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

# The wheel, built where git can read the version from the tags in .git.
FROM base AS wheel
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN python3 -m venv /tmp/build && /tmp/build/bin/pip wheel --no-deps -w /dist /src

FROM base
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV VIRTUAL_ENV=/opt/cmbflow PATH=/opt/cmbflow/bin:$PATH
# torch first, from its own index: PyPI's Linux torch is the multi-GB CUDA build. A torch wheel
# placed in container/wheels/ is used instead (offline builds). Bind mounts keep the wheels out
# of the image's layers.
RUN --mount=type=bind,source=container/wheels,target=/tmp/wheels \
    python3 -m venv $VIRTUAL_ENV \
 && if ls /tmp/wheels/torch-${TORCH_VERSION}*.whl >/dev/null 2>&1; then pip install /tmp/wheels/torch-${TORCH_VERSION}*.whl; \
    else pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"; fi
RUN --mount=type=bind,from=wheel,source=/dist,target=/tmp/dist \
    pip install /tmp/dist/cmbflow-*.whl && cmbflow --version
ENTRYPOINT ["cmbflow"]
CMD ["--help"]

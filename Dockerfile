# syntax=docker/dockerfile:1
# The serving image: the FastAPI app on a CUDA runtime (run with `docker run --gpus all`).
# The model comes from MLFLOW_TRACKING_URI (a tracking server) or a store mounted at /app/mlruns.
# Install steps are exactly the README's: scripts/install.sh (what `make install` runs).

ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- build: create /app/.venv with scripts/install.sh --------------------------------------
FROM ${CUDA_BASE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHON=python3
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# dependencies first so source edits do not reinstall them
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY mnist_mlops/__init__.py mnist_mlops/__init__.py
COPY hydra_plugins/ hydra_plugins/
RUN bash scripts/install.sh
COPY mnist_mlops/ mnist_mlops/
COPY conf/ conf/

# ---- runtime: the venv and the source, no compilers, non-root ------------------------------
FROM ${CUDA_BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin mnist
WORKDIR /app
COPY --from=build --chown=10001:10001 /app /app
ENV PATH="/app/.venv/bin:${PATH}" \
    MNIST_MLOPS_ROOT=/app \
    MNIST_SERVE_HOST=0.0.0.0 \
    MNIST_SERVE_PORT=8000 \
    MNIST_PREDICTION_LOG_DIR=/app/outputs/predictions \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN mkdir -p /app/outputs /app/mlruns && chown 10001:10001 /app/outputs /app/mlruns
USER 10001:10001
EXPOSE 8000
VOLUME ["/app/outputs"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
CMD ["python", "-m", "mnist_mlops.serve"]

# Two images from one file (multi-stage; builds with or without BuildKit):
#   docker build --target serving  -t mnist-mlops-serving .   # the API: only what serve imports
#   docker build --target pipeline -t mnist-mlops-pipeline .  # + Java, Spark, DVC, MLflow server
# BASE_IMAGE: any Debian bookworm image, with Python 3.11 (the default) or without it (CI passes
# a base made with debootstrap: scripts/ci/debian-base.sh; Debian's python3 is 3.11).
# TORCH_FIND_LINKS: a wheel folder URL to take torch/torchvision (and their CUDA wheels) from
# instead of PyPI (CI serves its staged .docker-wheels/ over HTTP: scripts/ci/build-images.sh);
# empty for a normal build. torch's wheels bundle CUDA: `docker run --gpus all` uses the GPU.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- base: Python 3.11 and the unprivileged user ---------------------------------------------
FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# hadolint ignore=DL3008
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin mnist

# ---- build: the serving venv in /opt/venv (compilers and pip caches stay in this stage) --------
FROM base AS build
# hadolint ignore=DL3008
RUN if ! python3.11 -c "import ensurepip" >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3.11 -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}" \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# .docker-wheels/host-ca.crt, when staged, is pip's CA bundle in the build stages (networks
# that re-sign TLS); the wheels there stay out of the build context (.dockerignore).
COPY .docker-wheels/ /tmp/docker-wheels/
RUN if [ -f /tmp/docker-wheels/host-ca.crt ]; then \
        printf '[global]\ncert = /tmp/docker-wheels/host-ca.crt\n' >/etc/pip.conf; \
    fi
# torch first, in a layer of its own (pyproject edits do not reinstall ~3 GB of CUDA wheels);
# --no-index, since pip prefers PyPI's copy of a version that a --find-links folder also has.
ARG TORCH_FIND_LINKS=""
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_FIND_LINKS" ]; then \
        pip install --no-index --find-links "$TORCH_FIND_LINKS" torch; \
    fi
# Dependencies before the source, so source edits do not reinstall them; README is a stand-in.
COPY pyproject.toml ./
COPY mnist_mlops/__init__.py mnist_mlops/__init__.py
RUN touch README.md && pip install -e .
COPY README.md ./
COPY hydra_plugins/ hydra_plugins/
COPY mnist_mlops/ mnist_mlops/
COPY conf/ conf/
RUN pip install --no-deps -e . \
    && python -m compileall -q mnist_mlops hydra_plugins

# ---- serving: the FastAPI app, non-root, no compilers ------------------------------------------
FROM base AS serving
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
ENV PATH="/opt/venv/bin:${PATH}" \
    MNIST_MLOPS_ROOT=/app \
    MNIST_SERVE_HOST=0.0.0.0 \
    MNIST_SERVE_PORT=8000 \
    MNIST_PREDICTION_LOG_DIR=/app/outputs/predictions \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN mkdir -p /app/outputs && chown 10001:10001 /app/outputs
USER 10001:10001
EXPOSE 8000
VOLUME ["/app/outputs"]
# Readiness, not liveness: healthy only once a model is loaded and answering (on the port the
# app was given; urlopen raises on 503, so "not ready" is unhealthy).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('MNIST_SERVE_PORT', '8000'), timeout=4)"]
# The model comes from the MLflow tracking server at MLFLOW_TRACKING_URI.
CMD ["python", "-m", "mnist_mlops.serve", "registry=server"]

# ---- build-pipeline: the serving venv plus the pipeline extra ----------------------------------
FROM build AS build-pipeline
ARG TORCH_FIND_LINKS=""
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_FIND_LINKS" ]; then \
        pip install --no-index --find-links "$TORCH_FIND_LINKS" torchvision; \
    fi \
    && pip install -e ".[pipeline]"

# ---- pipeline: training, drift, retraining jobs and the MLflow server (Java for Spark) --------
FROM base AS pipeline
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-pipeline /opt/venv /opt/venv
COPY --from=build-pipeline /app /app
WORKDIR /app
ENV PATH="/opt/venv/bin:${PATH}" \
    MNIST_MLOPS_ROOT=/app \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN mkdir -p /app/outputs /app/data /app/mlruns /app/reports \
    && chown 10001:10001 /app/outputs /app/data /app/mlruns /app/reports
USER 10001:10001
VOLUME ["/app/outputs", "/app/data"]
# The monitoring job by default; compose and `docker run` pass other commands (train, register).
CMD ["python", "-m", "mnist_mlops.retrain", "registry=server", "watch.enabled=true"]

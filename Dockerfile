# syntax=docker/dockerfile:1.7
# voice-worker image: the worker (`voice-worker start`, the default) and the web-call door (`voice-worker door`).
#
# Stage 1 builds a virtualenv from the hash-pinned lock (no compilers or dev tools reach the final image) and
# fetches model files at build time into /opt/models, a path the final stage copies and the runtime user reads.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN pip install "uv==0.13.8"
WORKDIR /src
# Dependencies first: this layer is reused until the lock changes.
COPY requirements.lock ./
RUN uv venv /opt/venv \
 && uv pip sync --python /opt/venv/bin/python --require-hashes --no-cache requirements.lock
COPY pyproject.toml README.md alembic.ini ./
COPY worker ./worker
COPY catalog ./catalog
COPY pipelines ./pipelines
COPY procedures ./procedures
COPY records ./records
COPY postcall ./postcall
COPY door ./door
RUN uv pip install --python /opt/venv/bin/python --no-deps --no-cache .
# Model files the plugins fetch (Silero's VAD ships inside its wheel; others land in HF_HOME).
ENV HF_HOME=/opt/models
RUN mkdir -p /opt/models && /opt/venv/bin/python -m livekit.agents download-files

FROM ${PYTHON_IMAGE} AS runtime
# A fixed, unprivileged uid so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --gid 10001 voice \
 && useradd --uid 10001 --gid voice --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin voice \
 && mkdir -p /var/lib/voice-worker \
 && chown voice:voice /var/lib/voice-worker
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:voice --chmod=0750 /opt/models /opt/models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/opt/models \
    HF_HUB_OFFLINE=1 \
    VOICE_WORKER_MODE=production \
    DATABASE_URL=sqlite:////var/lib/voice-worker/voice-worker.db \
    HEALTH_PORT=8081
USER voice
WORKDIR /var/lib/voice-worker
# 8081: worker health (GET / answers OK, 503 once LiveKit is unreachable); 8000: the door when run as one.
EXPOSE 8081 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('HEALTH_PORT', '8081')}/\", timeout=2)"]
CMD ["voice-worker", "start"]

# syntax=docker/dockerfile:1.7
# voice-worker image: the worker (`voice-worker start`, the default) and the web-call door (`voice-worker door`).
#
# Stage `build` makes a virtualenv from the hash-pinned runtime lock (requirements.lock: no test tools) and
# installs the project into it; compilers and uv stay in that stage. Stage `runtime` copies the venv and the
# model directory and runs as uid 10001.
#
# Model files: the VAD the worker runs (Silero, inside livekit-local-inference's native library), the turn
# detector (same library) and the Silero plugin's ONNX model (livekit-plugins-silero's wheel; the benchmarks'
# stock comparison uses it) ship in the wheels, so they are in the venv already and
# load with HF_HUB_OFFLINE=1. `download-files` runs anyway so that a plugin added later that downloads its
# model (into HF_HOME=/opt/models) gets it at build time; the runtime stage then proves every model loads
# offline as the runtime user, so a model that would need a download at run time fails the build instead.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN pip install "uv==0.13.8"
WORKDIR /src
# Dependencies first: this layer is reused until the lock changes. The venv's interpreter must be the base
# image's own, which the runtime stage has at the same path.
COPY requirements.lock ./
RUN uv venv --python /usr/local/bin/python3 /opt/venv \
 && uv pip sync --python /opt/venv/bin/python --require-hashes --no-cache requirements.lock
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY cli ./cli
COPY worker ./worker
COPY calls ./calls
COPY telemetry ./telemetry
COPY catalog ./catalog
COPY pipelines ./pipelines
COPY procedures ./procedures
COPY records ./records
COPY postcall ./postcall
COPY door ./door
COPY tools ./tools
COPY simulations ./simulations
RUN uv pip install --python /opt/venv/bin/python --no-deps --no-cache . \
 && /opt/venv/bin/voice-worker --help >/dev/null
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
# ORT_DISABLE_TELEMETRY: onnxruntime (Silero VAD) otherwise writes a device id under the cache directory and
# sends usage telemetry. XDG_CACHE_HOME: any cache goes to /tmp, writable under a read-only root.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/opt/models \
    HF_HUB_OFFLINE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    VOICE_WORKER_MODE=production \
    DATABASE_URL=sqlite:////var/lib/voice-worker/voice-worker.db \
    HEALTH_PORT=8081 \
    PROMETHEUS_PORT=9100
USER voice
WORKDIR /var/lib/voice-worker
RUN python -c "from livekit.plugins import silero; silero.VAD.load(); import livekit.local_inference as li; li.init_vad(); li.init_eot()"
# 8081: worker health (GET / alive, GET /ready registered with LiveKit, GET /worker load); 9100: worker
# metrics; 8000: the door.
EXPOSE 8081 9100 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('HEALTH_PORT', '8081')}/\", timeout=2)"]
CMD ["voice-worker", "start"]

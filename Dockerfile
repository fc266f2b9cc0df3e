# One image for every role; the command picks the program (docker/entrypoint.sh):
#   docker run fedtl server --help | client --help | prepare-data --help | certs --help | healthcheck
# Build (docs/deployment.md has the rest):
#   docker build -t fedtl .                 torch from pip's configured index (PyPI: the CUDA-capable build)
#   docker build -t fedtl --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#                                           CPU-only torch: a far smaller image
#   docker build -t fedtl --build-arg PRETRAINED=resnet18,mobilenet_v3_small .
#                                           bake torchvision ImageNet weights in, so containers start offline
#                                           (efficientnet_lite0's weights come with its pip package anyway)
# Layers run from rarely to often changed (system packages, pinned Python packages, weights, code), so a
# code change rebuilds in seconds. Every package installs from a wheel: no compiler is ever installed.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TORCH_HOME=/opt/torch \
    HOME=/home/fedtl

# tini runs as PID 1: it forwards SIGTERM to the program and reaps children, so `docker stop` and
# `docker compose down` take effect at once. The user fedtl (uid 10001) owns the volume mount points;
# HOME is world-writable so the image also runs as any other uid (`docker run --user "$(id -u)"`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --gid 0 --home-dir /home/fedtl --create-home --shell /usr/sbin/nologin fedtl \
 && chmod 1777 /home/fedtl \
 && mkdir -p /app /runs /data /certs "$TORCH_HOME" \
 && chown fedtl:0 /runs /data /certs

# Pinned dependencies before any code. TORCH_INDEX_URL (optional) is where torch and torchvision come
# from, e.g. PyTorch's CPU-only index; everything else comes from pip's configured index.
ARG TORCH_INDEX_URL=""
COPY requirements/runtime.txt /tmp/runtime.txt
RUN python -m venv "$VIRTUAL_ENV" \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" $(grep -E '^(torch|torchvision)==' /tmp/runtime.txt); \
    fi \
 && pip install -r /tmp/runtime.txt \
 && rm /tmp/runtime.txt

# Optional: torchvision ImageNet weights baked into $TORCH_HOME (needs internet at build time). Without
# them, mount a weights file and pass --weights /weights/FILE.pth (docker-compose.yml: WEIGHTS_DIR).
ARG PRETRAINED=""
COPY docker/fetch_weights.py /tmp/fetch_weights.py
RUN if [ -n "$PRETRAINED" ]; then python /tmp/fetch_weights.py "$PRETRAINED"; fi \
 && rm /tmp/fetch_weights.py

COPY docker/entrypoint.sh /usr/local/bin/fedtl
COPY docker/healthcheck.sh /usr/local/bin/fedtl-healthcheck
WORKDIR /app
ENV PYTHONPATH=/app
COPY fedtl/ fedtl/
COPY protos/ protos/
COPY common/ common/
COPY server/ server/
COPY client/ client/
COPY simulation/ simulation/
COPY scripts/ scripts/

USER fedtl
# No EXPOSE or HEALTHCHECK here: one image plays every role, and only the server listens. docker-compose.yml
# gives the server service its port and health check (fedtl-healthcheck: the gRPC health service, over TLS).
ENTRYPOINT ["tini", "-g", "--", "fedtl"]
CMD ["server", "--help"]

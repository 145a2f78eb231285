# Slim image of the sidecar (no TensorFlow), tagged as deploy/ expects it (compose, kustomize `images:`):
#   docker build -t tfs-sidecar:0.2.0 .
# It runs `sidecar run` as uid 10001 and also holds the TF-Serving-compatible testbed
# (`--entrypoint sidecar tfs-sidecar:0.2.0 testbed --backend numpy`), which deploy/compose uses as its model server.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# DL3013 asks for pinned versions: this installs the package being built, whose dependencies pyproject.toml bounds.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --prefix=/install '.[images]'

FROM python:3.11-slim
LABEL org.opencontainers.image.title="tfs-sidecar" \
      org.opencontainers.image.description="Monitoring sidecar for TensorFlow Serving and Open Inference Protocol servers" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /install /usr/local
# The state directory exists in the image, owned by the user that writes it: a named volume mounted there (compose)
# starts as a copy of it, owner included; Kubernetes mounts an emptyDir with fsGroup 10001 instead.
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/sidecar --no-create-home \
        --shell /usr/sbin/nologin sidecar \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/sidecar /var/lib/sidecar/state
USER 10001:10001
WORKDIR /var/lib/sidecar
ENV SIDECAR_STATE_DIR=/var/lib/sidecar/state PYTHONUNBUFFERED=1
EXPOSE 8500 8501 8508
# /healthz needs no token even with --admin-token; the admin listener binds 127.0.0.1:8508 unless set, and a
# deployment that sets 0.0.0.0:8508 (for Prometheus) still answers on loopback. Slim images have no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8508/healthz', timeout=3).status != 200)"]
ENTRYPOINT ["sidecar", "run"]

# Slim image of the sidecar (no TensorFlow): `docker build -t tfs-sidecar .`
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN pip install --no-cache-dir --prefix=/install '.[images]'

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /var/lib/sidecar --create-home sidecar
USER 10001
WORKDIR /var/lib/sidecar
ENV SIDECAR_STATE_DIR=/var/lib/sidecar/state PYTHONUNBUFFERED=1
EXPOSE 8500 8501 8508
ENTRYPOINT ["sidecar", "run"]

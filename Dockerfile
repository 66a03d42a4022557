# syntax=docker/dockerfile:1
# One image for both console scripts: `berth` (the registry) and `berth-operator`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY operator ./operator
RUN python -m venv /opt/berth \
    && /opt/berth/bin/pip install --upgrade pip \
    && /opt/berth/bin/pip install '.[operator]' \
    && /opt/berth/bin/python -m compileall -q /opt/berth/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="berth" \
      org.opencontainers.image.description="An OCI container registry for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 berth \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin berth \
    && mkdir -p /etc/berth /var/lib/berth \
    && chown 10001:10001 /var/lib/berth
COPY --from=build /opt/berth /opt/berth
ENV PATH=/opt/berth/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /var/lib/berth
EXPOSE 5000 8080
# The registry on a local directory. On Kubernetes the operator sets the command:
# `berth serve --config /etc/berth/config.yaml`, `berth gc ...` or `berth-operator`.
CMD ["berth", "serve", "--host", "0.0.0.0", "--port", "5000", "--storage-root", "/var/lib/berth"]

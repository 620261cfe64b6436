# syntax=docker/dockerfile:1
# The tailgate gateway: aiohttp + uvloop, no torch. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t tailgate-gateway .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tailgate
WORKDIR /src
COPY pyproject.toml README.md ./
# Only the gateway package: `.` without the [backend] extra never pulls torch.
COPY gateway/ gateway/
RUN /opt/tailgate/bin/pip install . \
    && /opt/tailgate/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/tailgate/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 tailgate \
    && useradd --system --uid 10001 --gid tailgate --no-create-home --shell /usr/sbin/nologin tailgate
COPY --from=build /opt/tailgate /opt/tailgate
COPY deploy/docker/healthcheck.py /usr/local/bin/tailgate-healthcheck
USER 10001:10001
# 8080 public listener, 9901 admin (/metrics, /healthz, /readyz, /admin/backends).
EXPOSE 8080 9901
# Liveness only: /readyz turns 503 when no backend is routable, which is not a reason to
# restart the gateway. Point it at /readyz where "healthy" should mean "can serve".
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "/usr/local/bin/tailgate-healthcheck", "http://127.0.0.1:9901/healthz"]
# SIGTERM drains (drain_timeout); give `docker stop -t` at least that long.
STOPSIGNAL SIGTERM
# Mount the config at /etc/tailgate/gateway.yaml (compose: a bind mount; Kubernetes: a ConfigMap).
ENTRYPOINT ["tailgate"]
CMD ["serve", "--config", "/etc/tailgate/gateway.yaml"]

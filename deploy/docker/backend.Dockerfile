# syntax=docker/dockerfile:1
# The bundled inference backend. CPU torch by default; for GPUs build with the CUDA wheels:
#   docker build -f deploy/docker/backend.Dockerfile -t tailgate-backend .
#   docker build -f deploy/docker/backend.Dockerfile -t tailgate-backend:cuda \
#     --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tailgate
# torch first, from its own index, in a layer of its own: it is the slow, rarely changing part.
RUN /opt/tailgate/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY backend/ backend/
# torch is already satisfied, so the extra only adds safetensors, tokenizers and numpy.
RUN /opt/tailgate/bin/pip install ".[backend]"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/tailgate/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 tailgate \
    && useradd --system --uid 10001 --gid tailgate --no-create-home --shell /usr/sbin/nologin tailgate
COPY --from=build /opt/tailgate /opt/tailgate
COPY deploy/docker/healthcheck.py /usr/local/bin/tailgate-healthcheck
USER 10001:10001
EXPOSE 8000
# /ready flips once the weights are loaded and warmed; a large model needs a long start period.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/bin/tailgate-healthcheck", "http://127.0.0.1:8000/ready"]
ENTRYPOINT ["tailgate-backend"]
CMD ["--preset", "tiny", "--host", "0.0.0.0", "--port", "8000"]

# Multi-stage image for the gateway, the worker and the offline model (one image, three commands).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY gateway gateway
COPY worker worker
COPY offline_model offline_model
COPY examples examples
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 gateway
COPY --from=build /install /usr/local
USER gateway
WORKDIR /home/gateway
ENV GATEWAY_HOST=0.0.0.0 PYTHONUNBUFFERED=1
# 8000: the gateway; 9101: a worker's /healthz and /metrics (GATEWAY_WORKER__METRICS_PORT).
EXPOSE 8000 9101
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)" || exit 1
CMD ["gateway"]

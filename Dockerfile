# One image for the API, the worker and the CLI: the command picks the role.
#   docker run IMAGE serve          the API (webhooks, operator API, /readyz, /metrics)
#   docker run IMAGE worker         the Temporal worker (probes and metrics on its metrics port)
#   docker run IMAGE grants list    any CLI command (polar-credits --help)
# Dependencies come only from requirements.lock, pinned with hashes (`make lock`). No Temporal
# dev server and no Polar stand-in: the image talks to a Temporal cluster and to Polar.
# docs/deploying.md.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# The lock first: this layer is rebuilt only when the dependencies change.
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock
# The service code only: no tests, benchmarks or stand-in (.dockerignore).
COPY pyproject.toml README.md ./
COPY polar_credits ./polar_credits
COPY api ./api
COPY activities ./activities
COPY workflows ./workflows
# setuptools comes from the lock too, so the build fetches nothing.
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation --no-index . \
    && /opt/venv/bin/pip check

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 credits \
    && useradd --system --uid 10001 --gid credits --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin credits
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CREDITS_API_HOST=0.0.0.0 \
    CREDITS_API_PORT=8000 \
    CREDITS_WORKER_METRICS_HOST=0.0.0.0
WORKDIR /app
# Numeric, so orchestrators can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000 9464
# The API's readiness (Temporal reachable). A worker container overrides it with
# `python -m polar_credits.probe worker` (its /readyz on CREDITS_WORKER_METRICS_PORT), as
# docker-compose.yml does; a one-shot CLI container can run with --no-healthcheck.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "polar_credits.probe", "api"]
ENTRYPOINT ["polar-credits"]
CMD ["--help"]

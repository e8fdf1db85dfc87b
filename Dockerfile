# syntax=docker/dockerfile:1
# The relay as a sidecar image: only runtime dependencies, non-root, configured by RELAY_*.
#   docker build -t outbox-relay .
#   docker run -e RELAY_DATABASE_URL=... -e RELAY_BOOTSTRAP_SERVERS=... outbox-relay

# Build stage: pip and the build backend stay here, the runtime gets only the venv.
FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY migrations ./migrations
# A plain (non-editable) install without extras: no dev tools, no demo broker.
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/pip uninstall -y pip setuptools

FROM python:3.12-slim AS runtime
# A fixed numeric uid so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --no-create-home --shell /usr/sbin/nologin relay
COPY --from=build /opt/venv /opt/venv
# Probes come from outside the container: listen on every interface, not loopback.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RELAY_HTTP_PORT=8080 \
    RELAY_HTTP_HOST=0.0.0.0 \
    RELAY_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080
# slim has no curl: probe /healthz with the standard library.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RELAY_HTTP_PORT', '8080'), timeout=2)"]
# Exec form: the relay is PID 1 and receives SIGTERM itself, so it drains the batch in
# flight (RELAY_SHUTDOWN_TIMEOUT) before exiting.
ENTRYPOINT ["outbox-relay"]
CMD ["run"]

# The call monitor's image: `call-monitor run`, listening on 0.0.0.0:9469.
#
#   docker build -t livekit-call-monitor .
#   docker run --rm -e LIVEKIT_URL=... -e LIVEKIT_API_KEY=... -e LIVEKIT_API_SECRET=... \
#     -p 127.0.0.1:9469:9469 livekit-call-monitor
#
# docker-compose.yml builds it as the `call-monitor` service.

ARG PYTHON_IMAGE=python:3.11-slim

# Build: the locked dependencies (uv.lock) and the package into /app/.venv.
FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --no-editable
# Then the package itself, installed as a wheel (no link back to /src).
COPY README.md ./
COPY monitor ./monitor
RUN uv sync --frozen --no-dev --no-editable

# Run: the same Python, the virtual environment, nothing else.
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 monitor \
    && useradd --system --uid 10001 --gid monitor --no-create-home \
        --home-dir /var/lib/call-monitor --shell /usr/sbin/nologin monitor \
    && mkdir -p /var/lib/call-monitor \
    && chown monitor:monitor /var/lib/call-monitor
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CALL_MONITOR_LOG_FORMAT=json \
    CALL_MONITOR_HTTP_HOST=0.0.0.0
# The journal goes here when CALL_MONITOR_JOURNAL points here: mount a volume on it.
WORKDIR /var/lib/call-monitor
# Numeric, so that a runtime checking runAsNonRoot can tell it is not root.
USER 10001:10001
EXPOSE 9469
# Liveness only (/readyz says whether livekit-server answers). Python, since the slim
# image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('CALL_MONITOR_HTTP_PORT', '9469'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["call-monitor"]
# Settings as environment, not flags: a flag would win over what a deployment sets.
CMD ["run"]

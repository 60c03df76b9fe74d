# One image for every role: the command picks it (`api`, `grpc`, `worker`, `serve`).
# Checked by tests/test_containers.py, which parses this file: Docker does not run where the
# tests run.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The runtime user exists before anything is installed, so no later layer depends on root.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home app

WORKDIR /app

# Only what `pip install .` reads: pyproject.toml (with README.md, its `readme`), the lock of
# the versions we test (requirements.lock) and the packages and module it lists. Tests,
# benchmarks and the Bruno collection stay out.
COPY pyproject.toml README.md requirements.lock ./
COPY models/ models/
COPY graphql_api/ graphql_api/
COPY exec_service/ exec_service/
COPY protos/ protos/
COPY cli.py ./

# A regular (not editable) install: the `workflow` script runs the installed packages. With
# the executors' extras, so that every role runs from this one image: `saq` for
# `workflow worker` and `workflow grpc --use-saq`, `ray` for `workflow grpc --use-ray`, `otel`
# for traces (on with OTEL_EXPORTER_OTLP_ENDPOINT).
# Constrained by requirements.lock: the image runs the versions the tests ran.
# /app stays root-owned except for the directory itself, which `app` may write: the default
# DATABASE_URL is a SQLite file in the working directory.
RUN pip install --no-cache-dir '.[saq,ray,otel]' -c requirements.lock \
    && chown app:app /app

USER app

# 8000: HTTP API (GraphQL, REST, health). 50051: gRPC execution service.
EXPOSE 8000 50051

# The HTTP roles' (`api`, `serve`: the default command's) readiness: database and Redis
# answer. The slim image has no curl, so Python asks; urlopen raises on a 503. The roles
# without HTTP set their own check where they run: compose.yaml gives `grpc` a
# grpc.health.v1 check and `worker` a Redis one; with plain `docker run`, pass
# `--health-cmd ...` or `--no-healthcheck` for those roles.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# The roles listen on every address of the container, so they start only with a key:
# `docker run -e WORKFLOW_ADMIN_KEY=...` (or keys made with `workflow keys create` in the
# database), else they exit with status 2 saying so. WORKFLOW_AUTH=off opts out.
ENTRYPOINT ["workflow"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]

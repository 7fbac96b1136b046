# syntax=docker/dockerfile:1
# The errands image: `errands run` (supervisor, workers and HTTP child) by default; any other
# command as arguments, e.g. `docker run --rm IMAGE migrate`. Settings come from the ERRANDS_*
# environment variables (see .env.example); ERRANDS_DATABASE_URL is required, since the image
# carries no embedded database.
#
#   docker build -t errands .
#   docker run --rm -p 3000:3000 -e ERRANDS_DATABASE_URL=postgresql://... errands

# -- build: errands as a wheel (build tools stay in this stage) --------------------------------
FROM python:3.11-slim AS build
ARG SETUPTOOLS_VERSION=84.2.1
WORKDIR /src
RUN pip install --no-cache-dir --disable-pip-version-check "setuptools==${SETUPTOOLS_VERSION}"
COPY pyproject.toml README.md ./
COPY errands ./errands
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation \
        --wheel-dir /wheels .

# -- runtime ------------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Pinned runtime dependencies first, wheels only: this layer is rebuilt only when the lock
# changes. Then errands itself with --no-deps, so nothing unpinned enters the image, and
# `pip check` fails the build if the lock misses a dependency.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --only-binary=:all: --requirement /tmp/requirements.lock \
    && rm /tmp/requirements.lock
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && pip check

# A numeric non-root user, so that `runAsNonRoot` policies can verify it.
RUN groupadd --system --gid 10001 errands \
    && useradd --system --uid 10001 --gid errands --create-home --home-dir /home/errands errands
USER 10001:10001
WORKDIR /home/errands

# Containers log JSON lines; the HTTP API (or the HTTP child of `errands run`) listens here.
ENV ERRANDS_HTTP_ADDR=0.0.0.0:3000 \
    ERRANDS_LOG_FORMAT=json
EXPOSE 3000

# Health: GET /ready on the port of ERRANDS_HTTP_ADDR: the database answers and, under
# `errands run`, a worker runs (a fleet crash-looping on a bad task module turns unhealthy).
# The slim image has no curl; urllib raises, and python exits 1, on a refused connection or a
# non-2xx status. README (The HTTP API: health and readiness) says which endpoint to watch.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = (os.environ.get('ERRANDS_HTTP_ADDR') or '0.0.0.0:3000').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/ready', timeout=3)"]

# Exec form, no shell: `docker stop` delivers SIGTERM to the supervisor itself (PID 1), which
# stops claiming, gives running jobs ERRANDS_GRACE_SECONDS, releases what is left and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["errands"]
CMD ["run"]

# The errands image: `errands run` (supervisor, workers and HTTP child) by default; any other
# command as arguments, e.g. `docker run --rm IMAGE migrate`. Settings come from the ERRANDS_*
# environment variables (see .env.example); ERRANDS_DATABASE_URL is required, since the image
# carries no embedded database.
#
#   docker build -t errands .
#   docker run --rm -p 3000:3000 -e ERRANDS_DATABASE_URL=postgresql://... errands
#
# Build arguments, none needed where the official image and PyPI can be reached:
#   PYTHON_IMAGE   the Python 3.11 base of both stages (deploy/images/build makes a stand-in
#                  from Debian's packages where no registry answers)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST   pip's own settings, and
#   EXTRA_CA_PEM   CA certificates (PEM text) pip trusts besides the system's, for a proxy that
#                  re-signs TLS
# The pip settings reach the build stage only: the image installs the wheels it made, offline.
ARG PYTHON_IMAGE=python:3.11-slim

# -- build: the pinned dependencies and errands as wheels (the only stage that downloads) -------
FROM ${PYTHON_IMAGE} AS build
ARG SETUPTOOLS_VERSION=84.2.1
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG EXTRA_CA_PEM
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Wheels only, exactly the lock's, without their dependencies: the runtime stage installs them
# with no index, so a dependency missing from the lock fails the build. This layer is rebuilt
# only when the lock changes.
COPY requirements.lock ./
RUN if [ -n "${EXTRA_CA_PEM:-}" ]; then \
        { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$EXTRA_CA_PEM"; } >/tmp/ca.pem \
        && export PIP_CERT=/tmp/ca.pem; \
    fi \
    && pip install "setuptools==${SETUPTOOLS_VERSION}" \
    && pip download --only-binary=:all: --no-deps --requirement requirements.lock --dest /deps \
    && rm -f /tmp/ca.pem
COPY pyproject.toml README.md ./
COPY errands ./errands
RUN pip wheel --no-deps --no-build-isolation --no-index --wheel-dir /wheels .

# -- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The lock's wheels first (a layer rebuilt only when the lock changes), from the build stage
# and no index; then errands itself with --no-deps, so nothing unpinned enters the image, and
# `pip check` fails the build if the lock misses a dependency.
COPY requirements.lock /tmp/requirements.lock
COPY --from=build /deps/ /tmp/deps/
RUN pip install --no-index --find-links /tmp/deps --only-binary=:all: \
        --requirement /tmp/requirements.lock \
    && rm -rf /tmp/requirements.lock /tmp/deps
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --no-index --no-deps /tmp/wheels/*.whl \
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

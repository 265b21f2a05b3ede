# syntax=docker/dockerfile:1
# MLEDGE's MLflow tracking server: MLflow 3.17 with its basic-auth app and the PostgreSQL driver, plus the `mledge`
# package (standard library only on this path) that builds the server's command line, its auth configuration and
# the permission matrix from mlflow/server.toml, mlflow/basic_auth.ini.template and mlflow/permissions.toml, the
# same way the local stack does. The environment sits where the local stack looks for `mlflow`
# (/opt/mledge/.venvs/workload) but holds only the server.
#
# Build from the repository root:  docker build -f docker/mlflow.Dockerfile -t mledge/mlflow:dev .

# An exact release tag; for a release build append "@sha256:<digest>" (docker buildx imagetools inspect <tag>).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- the server's environment, every version from the workload lock file --------------------------------------
FROM ${PYTHON_IMAGE} AS mlflow-env
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY requirements-workload.txt docker/requirements-mlflow.txt docker/install-env.sh /tmp/mledge-env/
RUN /tmp/mledge-env/install-env.sh mlflow

# --- the runtime image ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG MLEDGE_UID=10001
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLEDGE_HOME=/var/lib/mledge \
    MLEDGE_BIN=/opt/mledge/.venvs/workload/bin/mledge \
    PATH=/opt/mledge/.venvs/workload/bin:${PATH}

RUN groupadd --system --gid "${MLEDGE_UID}" mledge \
    && useradd --system --uid "${MLEDGE_UID}" --gid mledge --home-dir /var/lib/mledge --no-create-home \
        --shell /usr/sbin/nologin mledge \
    && install -d -o mledge -g mledge -m 0700 \
        /var/lib/mledge /var/lib/mledge/secrets /var/lib/mledge/mlflow /var/lib/mledge/mlflow/artifacts \
        /var/lib/mledge/logs /var/lib/mledge/run

COPY --from=mlflow-env /opt/mledge/.venvs/workload /opt/mledge/.venvs/workload
COPY pyproject.toml README.md /opt/mledge/
COPY mlflow /opt/mledge/mlflow
COPY mledge /opt/mledge/mledge
# fl only for its standard-library modules that mledge imports (fl.runs); its torch code never runs here.
COPY fl /opt/mledge/fl
COPY docker/entrypoint.sh docker/healthcheck.py /opt/mledge/docker/
RUN pip install --no-cache-dir --no-deps -e /opt/mledge \
    && pip check \
    && chmod 0755 /opt/mledge/docker/entrypoint.sh

USER ${MLEDGE_UID}:${MLEDGE_UID}
WORKDIR /var/lib/mledge
EXPOSE 5000
# /health needs no credentials under basic-auth and is exempt from MLflow's Host-header check.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=5 \
    CMD ["python", "/opt/mledge/docker/healthcheck.py", "http", "http://127.0.0.1:5000/health"]
ENTRYPOINT ["/opt/mledge/docker/entrypoint.sh"]
CMD ["mlflow"]

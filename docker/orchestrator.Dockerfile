# syntax=docker/dockerfile:1
# MLEDGE orchestrator image: Airflow 3.3.2 (api-server, scheduler, dag-processor, triggerer) with the FAB auth
# manager, our DAGs (dags/), operators and the UI plugin (operators/ui/, registered through the package's
# `airflow.plugins` entry point), and the workload environment that every task reaches through `mledge`
# (MLEDGE_BIN), exactly as on a developer's machine: Airflow 3.3 and Flower 1.41 pin incompatible FastAPI
# versions, so the two environments stay apart (.venvs/orchestrator and .venvs/workload).
#
# The same image runs each site's Airflow edge worker (`edge-worker <site>`: apache-airflow-providers-edge3 from the
# orchestrator lock): a worker needs Airflow, the DAG files, and the workload environment its tasks call `mledge` in.
# It holds no secret: a site's container gets only its own credentials, from docker-compose.yml.
#
# Build from the repository root:  docker build -f docker/orchestrator.Dockerfile -t mledge/orchestrator:dev .

# An exact release tag; for a release build append "@sha256:<digest>" (docker buildx imagetools inspect <tag>).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- the workload environment: the same two steps as docker/workload.Dockerfile, so BuildKit shares them ------
FROM ${PYTHON_IMAGE} AS workload-env
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY requirements-workload.txt docker/install-env.sh /tmp/mledge-env/
RUN /tmp/mledge-env/install-env.sh workload

# --- the Airflow environment ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS orchestrator-env
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY requirements-orchestrator.txt docker/requirements-fab.txt docker/install-env.sh /tmp/mledge-env/
RUN /tmp/mledge-env/install-env.sh orchestrator

# --- the runtime image ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG MLEDGE_UID=10001
# The sites whose edge worker this image may run: each gets a mount point for its own volume (see below).
ARG MLEDGE_SITES="plant_a plant_b plant_c"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLEDGE_HOME=/var/lib/mledge \
    AIRFLOW_HOME=/var/lib/mledge/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/mledge/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    MLEDGE_BIN=/opt/mledge/.venvs/workload/bin/mledge \
    PATH=/opt/mledge/.venvs/orchestrator/bin:${PATH}

# An unprivileged user owns the state; the code and both environments stay root-owned (read-only to it). The
# mount points of the compose volumes exist beforehand with that owner, so a fresh named volume inherits it.
RUN groupadd --system --gid "${MLEDGE_UID}" mledge \
    && useradd --system --uid "${MLEDGE_UID}" --gid mledge --home-dir /var/lib/mledge --no-create-home \
        --shell /usr/sbin/nologin mledge \
    && install -d -o mledge -g mledge -m 0700 \
        /var/lib/mledge /var/lib/mledge/secrets /var/lib/mledge/secrets/tls /var/lib/mledge/airflow \
        /var/lib/mledge/airflow/logs /var/lib/mledge/flwr /var/lib/mledge/logs /var/lib/mledge/run \
        /var/lib/mledge/sites \
    && for site in ${MLEDGE_SITES}; do install -d -o mledge -g mledge -m 0700 "/var/lib/mledge/sites/${site}"; done

COPY --from=workload-env /opt/mledge/.venvs/workload /opt/mledge/.venvs/workload
COPY --from=orchestrator-env /opt/mledge/.venvs/orchestrator /opt/mledge/.venvs/orchestrator
COPY pyproject.toml README.md /opt/mledge/
COPY mlflow /opt/mledge/mlflow
COPY fl /opt/mledge/fl
COPY drift /opt/mledge/drift
COPY costs /opt/mledge/costs
COPY operators /opt/mledge/operators
COPY mledge /opt/mledge/mledge
COPY dags /opt/mledge/dags
COPY docker/entrypoint.sh docker/healthcheck.py /opt/mledge/docker/
# The project goes into both environments without dependencies, as `make setup` does: in the workload one for
# `mledge`, in the Airflow one for `operators` and the `airflow.plugins` entry point of the UI plugin.
RUN /opt/mledge/.venvs/workload/bin/pip install --no-cache-dir --no-deps -e /opt/mledge \
    && /opt/mledge/.venvs/orchestrator/bin/pip install --no-cache-dir --no-deps -e /opt/mledge \
    && /opt/mledge/.venvs/workload/bin/pip check \
    && /opt/mledge/.venvs/orchestrator/bin/pip check \
    && chmod 0755 /opt/mledge/docker/entrypoint.sh \
    && /opt/mledge/.venvs/orchestrator/bin/python -c \
        "from importlib.metadata import entry_points; assert 'mledge' in entry_points(group='airflow.plugins').names"

USER ${MLEDGE_UID}:${MLEDGE_UID}
WORKDIR /var/lib/mledge
# The component started by entrypoint.sh records how to check it; a one-shot job records nothing and passes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=5 \
    CMD ["python", "/opt/mledge/docker/healthcheck.py", "auto"]
ENTRYPOINT ["/opt/mledge/docker/entrypoint.sh"]
CMD ["help"]

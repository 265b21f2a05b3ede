# syntax=docker/dockerfile:1
# MLEDGE workload image: our libraries (fl, drift, costs), the `mledge` entry point, Flower, torch (CPU), MLflow's
# client, Evidently and the cloud SDKs, from requirements-workload.txt. It runs the Flower SuperLink, the two gateways
# (gateway-fleet, gateway-edge), each site's SuperNode and the one-shot setup jobs (pki-init, register-nodes, each
# site's site-init); docker/entrypoint.sh says which.
#
# The layout is a developer's checkout: sources in /opt/mledge, the environment in /opt/mledge/.venvs/workload,
# state in MLEDGE_HOME=/var/lib/mledge. So `mledge` finds its programs exactly where the local stack does.
#
# Build from the repository root:  docker build -f docker/workload.Dockerfile -t mledge/workload:dev .

# An exact release tag; for a release build append "@sha256:<digest>" (docker buildx imagetools inspect <tag>).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- the environment, from the lock file ----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS workload-env
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY requirements-workload.txt docker/install-env.sh /tmp/mledge-env/
RUN /tmp/mledge-env/install-env.sh workload

# --- the runtime image ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG MLEDGE_UID=10001
# The sites whose SuperNode and setup this image may run: each gets mount points for its own volumes (see below).
ARG MLEDGE_SITES="plant_a plant_b plant_c"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLEDGE_HOME=/var/lib/mledge \
    MLEDGE_BIN=/opt/mledge/.venvs/workload/bin/mledge \
    PATH=/opt/mledge/.venvs/workload/bin:${PATH}

# An unprivileged user owns the state; the code and the environment stay root-owned (read-only to it). The mount
# points of the compose volumes exist beforehand with that owner, so a fresh named volume inherits it.
RUN groupadd --system --gid "${MLEDGE_UID}" mledge \
    && useradd --system --uid "${MLEDGE_UID}" --gid mledge --home-dir /var/lib/mledge --no-create-home \
        --shell /usr/sbin/nologin mledge \
    && install -d -o mledge -g mledge -m 0700 \
        /var/lib/mledge /var/lib/mledge/secrets /var/lib/mledge/secrets/tls /var/lib/mledge/sites \
        /var/lib/mledge/flower /var/lib/mledge/flwr /var/lib/mledge/logs /var/lib/mledge/run \
        /var/lib/mledge/export /var/lib/mledge/export/server /var/lib/mledge/export/public \
        /var/lib/mledge/export/pubkey /var/lib/mledge/export/nodes \
    && for site in ${MLEDGE_SITES}; do \
        install -d -o mledge -g mledge -m 0700 "/var/lib/mledge/sites/${site}" "/var/lib/mledge/export/nodes/${site}"; \
    done

COPY --from=workload-env /opt/mledge/.venvs/workload /opt/mledge/.venvs/workload
COPY pyproject.toml README.md /opt/mledge/
COPY mlflow /opt/mledge/mlflow
COPY fl /opt/mledge/fl
COPY drift /opt/mledge/drift
COPY costs /opt/mledge/costs
COPY mledge /opt/mledge/mledge
COPY docker/entrypoint.sh docker/healthcheck.py docker/site-init.py /opt/mledge/docker/
# Editable, as `make setup` installs it: mledge.ops.settings finds mlflow/ and .venvs/ beside the package.
RUN pip install --no-cache-dir --no-deps -e /opt/mledge \
    && pip check \
    && chmod 0755 /opt/mledge/docker/entrypoint.sh \
    && mledge --help > /dev/null

USER ${MLEDGE_UID}:${MLEDGE_UID}
WORKDIR /var/lib/mledge
# The component started by entrypoint.sh records how to check it; a one-shot job records nothing and passes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=5 \
    CMD ["python", "/opt/mledge/docker/healthcheck.py", "auto"]
ENTRYPOINT ["/opt/mledge/docker/entrypoint.sh"]
CMD ["help"]

#!/usr/bin/env bash
# Build one of MLEDGE's virtual environments inside an image, from the lock files: the pins `make setup` uses.
#
#   install-env.sh workload      /opt/mledge/.venvs/workload from requirements-workload.txt
#   install-env.sh orchestrator  /opt/mledge/.venvs/orchestrator from requirements-orchestrator.txt, then the FAB
#                                auth manager's pinned closure (docker/requirements-fab.txt)
#   install-env.sh mlflow        /opt/mledge/.venvs/workload holding only the MLflow server
#                                (docker/requirements-mlflow.txt, every version from requirements-workload.txt)
#
# The lock files are read from $MLEDGE_LOCKS (default /tmp/mledge-env). One script for every Dockerfile, so the
# workload environment is built by identical steps in the workload and orchestrator images (BuildKit reuses it).
set -euo pipefail

kind="${1:?usage: install-env.sh workload|orchestrator|mlflow}"
locks="${MLEDGE_LOCKS:-/tmp/mledge-env}"
venvs=/opt/mledge/.venvs

pip_install() {
  "${venv}/bin/pip" install --no-cache-dir --disable-pip-version-check --no-input "$@"
}

case "${kind}" in
  workload)
    venv="${venvs}/workload"
    python -m venv "${venv}"
    # torch first, from PyTorch's CPU index, at the lock's version: PyPI's build of the same version is the CUDA
    # one (GBs of GPU libraries). The lock's `torch==X` is then satisfied by `X+cpu` (PEP 440 local versions).
    torch_version="$(sed -n 's/^torch==//p' "${locks}/requirements-workload.txt")"
    if [[ -z "${torch_version}" ]]; then
      echo "install-env.sh: ${locks}/requirements-workload.txt pins no torch version (torch==X)" >&2
      exit 1
    fi
    pip_install --no-deps --index-url https://download.pytorch.org/whl/cpu "torch==${torch_version}+cpu"
    pip_install -r "${locks}/requirements-workload.txt"
    ;;
  orchestrator)
    venv="${venvs}/orchestrator"
    python -m venv "${venv}"
    pip_install -r "${locks}/requirements-orchestrator.txt"
    # The FAB closure is complete and pinned, so --no-deps installs exactly it (it moves python-dateutil to 2.x,
    # which apache-airflow-providers-fab needs); `pip check` below proves the result is consistent.
    pip_install --no-deps -r "${locks}/requirements-fab.txt"
    ;;
  mlflow)
    venv="${venvs}/workload"
    python -m venv "${venv}"
    pip_install -c "${locks}/requirements-workload.txt" -r "${locks}/requirements-mlflow.txt"
    ;;
  *)
    echo "install-env.sh: unknown environment '${kind}' (workload, orchestrator or mlflow)" >&2
    exit 2
    ;;
esac

"${venv}/bin/pip" check

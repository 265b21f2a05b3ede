#!/usr/bin/env bash
# Entry point of MLEDGE's images: one word names the component, and the component is started by the same program
# and the same command lines as the local stack (`mledge serve <component>` runs what `mledge stack up` starts,
# in the foreground, with the process environment taking precedence over the stack's defaults). So the end-to-end
# test of the local stack exercises what these containers run (component names as in `mledge stack status`).
# Flags after a long-running component's word are requirements, not additions: `mledge serve` refuses to start
# unless the stack's command line has each of them (with the same value) and has no --insecure, so a deployment
# states what it relies on (TLS, node auth, the gateways' upstreams, a worker's queue, ...).
#
# Platform side:
#   superlink                 Flower SuperLink: TLS, SuperNode authentication, --database (long-running)
#   gateway-fleet             the sites' only door to Flower: forwards /v1/fleet/ to the SuperLink (long-running)
#   gateway-edge              the edge workers' only door to Airflow: /edge_worker/v1/ and /execution/ (long-running)
#   mlflow                    MLflow tracking server with basic-auth (long-running)
#   airflow-api-server | airflow-scheduler | airflow-dag-processor | airflow-triggerer   (long-running)
#   pki-init                  one-shot: local CA and the server certificate of the SuperLink and the gateways;
#                             exports the server's files and the public CA certificate (no site key: see site-init)
#   register-nodes            one-shot: register each site's exported public key (<dir>/<site>/<site>.pub)
#   mlflow-init               one-shot: MLflow users and the permission matrix (mlflow/permissions.toml)
#   airflow-init              one-shot: Airflow metadata database migration, FAB users admin, viewer and platform
# Site side (SITE: the argument, else $MLEDGE_SITE; if both are given they must agree):
#   site-init [SITE]          one-shot, in the site's own volume: its SuperNode key pair, a copy of the CA
#                             certificate, demonstration data; exports its public key (docker/site-init.py)
#   trainer [SITE]            the site's trainer (its ClientApp handlers kept warm); a Unix socket in the site's
#                             volume, no network
#   supernode [SITE]          the site's Flower SuperNode; only outbound connections, to gateway-fleet
#   edge-worker [SITE]        the site's Airflow edge worker (queue SITE); only outbound connections, to gateway-edge
# Anything else:
#   mledge ARGS...            any `mledge` command;  anything else: run as given (e.g. bash)
set -euo pipefail

MLEDGE="${MLEDGE_BIN:-/opt/mledge/.venvs/workload/bin/mledge}"
# The workload environment's interpreter (mledge and its dependencies), for the helpers beside this script.
PYTHON="$(dirname "${MLEDGE}")/python"
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HOME_DIR="${MLEDGE_HOME:-/var/lib/mledge}"
# The platform's home as mledge.ops.settings finds it (compose sets MLEDGE_PLATFORM_HOME for central services).
PLATFORM_DIR="${MLEDGE_PLATFORM_HOME:-${HOME_DIR}/platform}"
# Read by `healthcheck.py auto` (the images' HEALTHCHECK): which component this container runs.
COMPONENT_FILE="${MLEDGE_COMPONENT_FILE:-/tmp/mledge-component}"
# What only the platform may hold: a site's container that has any of these is misconfigured and does not start.
PLATFORM_ONLY=(
  MLEDGE_AIRFLOW_DB_URL MLEDGE_PLATFORM_DB_URL MLEDGE_COST_DB_URL MLEDGE_MLFLOW_BACKEND_STORE_URI
  MLEDGE_MLFLOW_AUTH_DB_URL AIRFLOW__DATABASE__SQL_ALCHEMY_CONN AIRFLOW__CORE__FERNET_KEY AIRFLOW__API__SECRET_KEY
  AIRFLOW_PLATFORM_PASSWORD MLEDGE_PLATFORM_HOME
)

say() { echo "entrypoint: $*" >&2; }
die() { say "$*"; exit 64; }

need() {  # a required variable, named in the error (compose's ${VAR:?} catches it earlier; `docker run` does not)
  local name
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || die "$name is not set (see .env.example)"
  done
}

serve() {  # record the component for the health check, then become it; the rest are flags it must have
  printf '%s\n' "$1" > "${COMPONENT_FILE}"
  exec "${MLEDGE}" serve "$1" -- "${@:2}"
}

SITE=""
site_side() {  # SITE := the site a site-side command serves; refuses a container that holds platform secrets
  local command="$1" named="${2:-}" name
  SITE="${named:-${MLEDGE_SITE:-}}"
  [[ -n "${SITE}" ]] || die "${command}: name the site (argument or MLEDGE_SITE)"
  if [[ -n "${MLEDGE_SITE:-}" && "${MLEDGE_SITE}" != "${SITE}" ]]; then
    die "${command} ${SITE}: MLEDGE_SITE is ${MLEDGE_SITE}; a site's container serves its own site only"
  fi
  for name in "${PLATFORM_ONLY[@]}"; do
    [[ -z "${!name:-}" ]] || die "${command} ${SITE}: ${name} is set, but a site's container holds nothing of the platform"
  done
  if [[ -n "${MLFLOW_TRACKING_USERNAME:-}" && "${MLFLOW_TRACKING_USERNAME}" != "${SITE}" ]]; then
    die "${command} ${SITE}: MLFLOW_TRACKING_USERNAME is ${MLFLOW_TRACKING_USERNAME}; a site acts as itself only"
  fi
}

pki_init() {
  # The server certificate is shared by the SuperLink (which the fleet gateway reaches as "superlink") and the two
  # gateways (which the sites reach as "gateway-fleet" and "gateway-edge"); MLEDGE_SUPERLINK_HOSTNAMES adds names
  # (comma-separated) for sites that connect from elsewhere, e.g. the gateways' public DNS name.
  local hostnames=(--hostname superlink --hostname gateway-fleet --hostname gateway-edge) name
  IFS=',' read -r -a extra <<< "${MLEDGE_SUPERLINK_HOSTNAMES:-}"
  for name in "${extra[@]}"; do
    name="${name// /}"
    if [[ -n "${name}" ]]; then
      hostnames+=(--hostname "${name}")
    fi
  done
  # `pki init` also makes a key pair for each site whose home it finds: here it must find none (a data root that
  # does not exist). Each site makes its own key in its own volume (site-init); no site volume is mounted here.
  MLEDGE_DATA_ROOT="${HOME_DIR}/no-site-here" "${MLEDGE}" pki init "${hostnames[@]}" > /dev/null

  local tls="${PLATFORM_DIR}/secrets/tls" server="${HOME_DIR}/export/server" public="${HOME_DIR}/export/public"
  # The SuperLink and the gateways get the server certificate, its key and the CA certificate, never the CA's key.
  install -d -m 0700 "${server}"
  install -m 0600 "${tls}/ca.crt" "${tls}/server.crt" "${tls}/server.key" "${server}/"
  # Everyone else gets only the CA certificate (each site copies it into its own volume: site-init).
  install -d -m 0755 "${public}"
  install -m 0644 "${tls}/ca.crt" "${public}/ca.crt"
  say "pki-init: CA and server certificate ready (${hostnames[*]})"
}

site_init() {
  "${PYTHON}" "${SCRIPTS}/site-init.py" "${SITE}" \
    --ca-cert "${MLEDGE_CA_CERT:-${HOME_DIR}/export/public/ca.crt}" \
    --export-dir "${MLEDGE_PUBLIC_KEY_EXPORT:-${HOME_DIR}/export/pubkey}" \
    --batches "${MLEDGE_DEMO_BATCHES:-0}"
}

register_nodes() {
  # Each site's public key arrives in a volume of its own (pubkey-<site>, written only by site-init-<site>),
  # mounted at <dir>/<site>/. Only <dir>/<site>/<site>.pub is taken: a site cannot hand in a key in another's name.
  local root="${MLEDGE_PUBLIC_KEYS_DIR:-${HOME_DIR}/export/nodes}" keys dir site found=0
  keys="$(mktemp -d)"
  for dir in "${root}"/*/; do
    [[ -d "${dir}" ]] || continue
    site="$(basename "${dir}")"
    [[ -f "${dir}${site}.pub" ]] || die "register-nodes: ${dir} holds no ${site}.pub (did site-init-${site} run?)"
    install -m 0644 "${dir}${site}.pub" "${keys}/${site}.pub"
    found=$((found + 1))
  done
  [[ "${found}" -gt 0 ]] || die "register-nodes: no <site>/<site>.pub under ${root} (no pubkey-<site> volume mounted?)"
  # The `flwr` CLI's connection to the SuperLink ($FLWR_HOME/config.toml, verifying the CA), as `mledge serve`
  # writes it for the platform's long-running components.
  "${PYTHON}" -c 'from mledge.ops.components import write_flwr_config
from mledge.ops.settings import Settings
write_flwr_config(Settings())'
  exec "${MLEDGE}" nodes register --public-keys-dir "${keys}" "$@"
}

airflow_platform_password() {
  # The platform's own Airflow identity ("platform", role Viewer, made by airflow-init): platform tasks read the edge
  # workers' state with it (`mledge sites worker`), from the file the local stack keeps Airflow passwords in. The
  # variable is removed before the component starts: tasks find the password only in that file (mode 0600).
  need AIRFLOW_PLATFORM_PASSWORD
  "${PYTHON}" - <<'PY'
import json
import os

from mledge.ops.components import airflow_passwords_file
from mledge.ops.settings import Settings
from mledge.security.files import private_dir, write_private

path = airflow_passwords_file(Settings())
private_dir(path.parent)
known = json.loads(path.read_text() or "{}") if path.exists() else {}
known["platform"] = os.environ["AIRFLOW_PLATFORM_PASSWORD"]
write_private(path, json.dumps(known) + "\n")
PY
  unset AIRFLOW_PLATFORM_PASSWORD
}

airflow_init() {
  need AIRFLOW__DATABASE__SQL_ALCHEMY_CONN AIRFLOW_ADMIN_PASSWORD AIRFLOW_VIEWER_PASSWORD AIRFLOW_PLATFORM_PASSWORD
  # The same migration `mledge stack up` runs (stack.migrate_airflow); with the FAB auth manager configured it
  # also creates FAB's user and role tables, and with the Edge executor configured the edge3 provider's tables.
  airflow db migrate
  # Idempotent: FAB answers "already exists" for a user that does. To change a password later use
  # `airflow users reset-password`; changing .env alone does not.
  airflow users create --username "${AIRFLOW_ADMIN_USERNAME:-admin}" --password "${AIRFLOW_ADMIN_PASSWORD}" \
    --role Admin --firstname MLEDGE --lastname Administrator --email "${AIRFLOW_ADMIN_EMAIL:-admin@mledge.invalid}"
  airflow users create --username "${AIRFLOW_VIEWER_USERNAME:-viewer}" --password "${AIRFLOW_VIEWER_PASSWORD}" \
    --role Viewer --firstname MLEDGE --lastname Viewer --email "${AIRFLOW_VIEWER_EMAIL:-viewer@mledge.invalid}"
  # The platform's tasks: read-only (FAB's Viewer may read Jobs, under which the edge workers' state is filed).
  airflow users create --username platform --password "${AIRFLOW_PLATFORM_PASSWORD}" \
    --role Viewer --firstname MLEDGE --lastname Platform --email platform@mledge.invalid
}

command="${1:-help}"
if [[ $# -gt 0 ]]; then
  shift
fi

case "${command}" in
  superlink | gateway-fleet | gateway-edge)
    serve "${command}" "$@"
    ;;
  site-init | trainer | supernode | edge-worker)
    named=""
    if [[ $# -gt 0 && "$1" != -* ]]; then
      named="$1"
      shift
    fi
    site_side "${command}" "${named}"
    case "${command}" in
      site-init)
        site_init
        ;;
      trainer)
        serve "trainer-${SITE}" "$@"
        ;;
      supernode)
        serve "supernode-${SITE}" "$@"
        ;;
      edge-worker)
        # The provider's workers sign their calls with Airflow's JWT secret (see README, security).
        need AIRFLOW__API_AUTH__JWT_SECRET AIRFLOW__EDGE__API_URL AIRFLOW__CORE__EXECUTION_API_SERVER_URL
        serve "edge-worker-${SITE}" "$@"
        ;;
    esac
    ;;
  mlflow | airflow-api-server | airflow-dag-processor | airflow-triggerer)
    serve "${command}" "$@"
    ;;
  airflow-scheduler)
    airflow_platform_password
    serve "${command}" "$@"
    ;;
  pki-init)
    pki_init
    ;;
  register-nodes)
    register_nodes "$@"
    ;;
  mlflow-init)
    exec "${MLEDGE}" mlflow apply-permissions "$@"
    ;;
  airflow-init)
    airflow_init
    ;;
  mledge)
    exec "${MLEDGE}" "$@"
    ;;
  help | --help | -h)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    ;;
  *)
    exec "${command}" "$@"
    ;;
esac

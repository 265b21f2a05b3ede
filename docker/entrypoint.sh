#!/usr/bin/env bash
# Entry point of MLEDGE's images: one word names the component, and the component is started by the same program
# and the same command lines as the local stack (`mledge serve <component>` runs what `mledge stack up` starts,
# in the foreground, with the process environment taking precedence over the stack's defaults). So the end-to-end
# test of the local stack exercises what these containers run (component names as in `mledge stack status`). Flags after a long-running component's word are
# requirements, not additions: `mledge serve` refuses to start unless the stack's command line has each of them
# (with the same value) and has no --insecure, so a deployment states what it relies on (TLS, node auth, ...).
#
#   superlink                 Flower SuperLink: TLS, SuperNode authentication, --database (long-running)
#   supernode [SITE]          one site's Flower SuperNode (SITE or $MLEDGE_SITE); only outbound connections
#   mlflow                    MLflow tracking server with basic-auth (long-running)
#   airflow-api-server | airflow-scheduler | airflow-dag-processor | airflow-triggerer   (long-running)
#   pki-init                  one-shot: local CA, SuperLink certificate, each mounted site's SuperNode key pair;
#                             exports the SuperLink's files and the public ones (CA certificate, public keys)
#   register-nodes            one-shot: register every exported SuperNode public key with the SuperLink
#   mlflow-init               one-shot: MLflow users and the permission matrix (mlflow/permissions.toml)
#   airflow-init              one-shot: Airflow metadata database migration, FAB users admin and viewer
#   mledge ARGS...            any `mledge` command;  anything else: run as given (e.g. bash)
set -euo pipefail

MLEDGE="${MLEDGE_BIN:-/opt/mledge/.venvs/workload/bin/mledge}"
HOME_DIR="${MLEDGE_HOME:-/var/lib/mledge}"
# Read by `healthcheck.py auto` (the images' HEALTHCHECK): which component this container runs.
COMPONENT_FILE="${MLEDGE_COMPONENT_FILE:-/tmp/mledge-component}"

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

pki_init() {
  # Extra names the SuperLink is reached by (comma-separated), e.g. a public DNS name for sites elsewhere.
  local hostnames=(--hostname superlink) name
  IFS=',' read -r -a extra <<< "${MLEDGE_SUPERLINK_HOSTNAMES:-}"
  for name in "${extra[@]}"; do
    name="${name// /}"
    if [[ -n "${name}" ]]; then
      hostnames+=(--hostname "${name}")
    fi
  done
  "${MLEDGE}" pki init "${hostnames[@]}"

  local tls="${HOME_DIR}/secrets/tls" superlink="${HOME_DIR}/export/superlink" public="${HOME_DIR}/export/public"
  # The SuperLink gets its certificate and key and the CA certificate, never the CA's key.
  install -d -m 0700 "${superlink}"
  install -m 0600 "${tls}/ca.crt" "${tls}/server.crt" "${tls}/server.key" "${superlink}/"
  # Everyone else gets only public material: the CA certificate and each site's public key.
  install -d -m 0755 "${public}" "${public}/nodes"
  install -m 0644 "${tls}/ca.crt" "${public}/ca.crt"
  local key site found=0
  for key in "${HOME_DIR}"/sites/*/keys/supernode.pub; do
    [[ -f "${key}" ]] || continue
    site="$(basename "$(dirname "$(dirname "${key}")")")"
    install -m 0644 "${key}" "${public}/nodes/${site}.pub"
    found=$((found + 1))
  done
  [[ "${found}" -gt 0 ]] || die "pki-init: no site key was made under ${HOME_DIR}/sites/*/keys (no site volume mounted?)"
  say "pki-init: CA and SuperLink certificate ready; ${found} SuperNode public key(s) exported"
}

airflow_init() {
  need AIRFLOW__DATABASE__SQL_ALCHEMY_CONN AIRFLOW_ADMIN_PASSWORD AIRFLOW_VIEWER_PASSWORD
  # The same migration `mledge stack up` runs (stack.migrate_airflow); with the FAB auth manager configured it
  # also creates FAB's user and role tables.
  airflow db migrate
  # Idempotent: FAB answers "already exists" for a user that does. To change a password later use
  # `airflow users reset-password`; changing .env alone does not.
  airflow users create --username "${AIRFLOW_ADMIN_USERNAME:-admin}" --password "${AIRFLOW_ADMIN_PASSWORD}" \
    --role Admin --firstname MLEDGE --lastname Administrator --email "${AIRFLOW_ADMIN_EMAIL:-admin@mledge.invalid}"
  airflow users create --username "${AIRFLOW_VIEWER_USERNAME:-viewer}" --password "${AIRFLOW_VIEWER_PASSWORD}" \
    --role Viewer --firstname MLEDGE --lastname Viewer --email "${AIRFLOW_VIEWER_EMAIL:-viewer@mledge.invalid}"
}

command="${1:-help}"
if [[ $# -gt 0 ]]; then
  shift
fi

case "${command}" in
  superlink)
    serve superlink "$@"
    ;;
  supernode)
    site="${1:-${MLEDGE_SITE:-}}"
    [[ -n "${site}" ]] || die "supernode: name the site (argument or MLEDGE_SITE)"
    if [[ $# -gt 0 ]]; then
      shift
    fi
    # Demonstration data generated inside the site's own volume; 0 for a site that brings its own batches.
    if [[ "${MLEDGE_DEMO_BATCHES:-0}" -gt 0 ]]; then
      "${MLEDGE}" data init --site "${site}" --batches "${MLEDGE_DEMO_BATCHES}" > /dev/null
    fi
    serve "supernode-${site}" "$@"
    ;;
  mlflow | airflow-api-server | airflow-scheduler | airflow-dag-processor | airflow-triggerer)
    serve "${command}" "$@"
    ;;
  pki-init)
    pki_init
    ;;
  register-nodes)
    exec "${MLEDGE}" nodes register --public-keys-dir "${MLEDGE_PUBLIC_KEYS_DIR:-${HOME_DIR}/secrets/tls/nodes}" "$@"
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

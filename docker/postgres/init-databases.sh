#!/usr/bin/env bash
# First start of the stack's PostgreSQL (the official image runs /docker-entrypoint-initdb.d/* once, on an empty
# data volume): one role and one database per user of it, each role owning only its own database(s), and no
# connect right for anyone else:
#
#   role      database(s)          used by
#   airflow   airflow              Airflow's metadata database (every Airflow component)
#   mlflow    mlflow, mlflow_auth  the MLflow tracking store, and the basic-auth app's users and grants
#   platform  platform             MLEDGE's platform database (strategy state, drift alerts): Airflow tasks, ServerApp
#   costs     costs                the cost store (billing ingestion, reports)
#
# Passwords come from the environment (docker-compose.yml maps them from .env); psql variables keep them out of
# the SQL text, so no quoting can go wrong.
set -euo pipefail

for name in AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD PLATFORM_DB_PASSWORD COSTS_DB_PASSWORD; do
  if [[ -z "${!name:-}" ]]; then
    echo "init-databases.sh: ${name} is not set (see .env.example)" >&2
    exit 1
  fi
done

# The passwords are psql variables (:'airflow_pw', ...) bound from the required environment values above, never
# literals in this file; psql quotes them, so they do not appear in the SQL text or the server log.
psql --no-psqlrc --set ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
  --set airflow_pw="${AIRFLOW_DB_PASSWORD}" \
  --set mlflow_pw="${MLFLOW_DB_PASSWORD}" \
  --set platform_pw="${PLATFORM_DB_PASSWORD}" \
  --set costs_pw="${COSTS_DB_PASSWORD}" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE ROLE platform LOGIN PASSWORD :'platform_pw';
CREATE ROLE costs LOGIN PASSWORD :'costs_pw';

CREATE DATABASE airflow OWNER airflow;
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE platform OWNER platform;
CREATE DATABASE costs OWNER costs;

-- PUBLIC may connect to every database by default: only each owner may.
REVOKE ALL ON DATABASE airflow, mlflow, mlflow_auth, platform, costs FROM PUBLIC;
SQL

echo "init-databases.sh: databases airflow, mlflow, mlflow_auth, platform and costs created" >&2

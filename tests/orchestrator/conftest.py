"""Airflow-side tests run in the orchestrator environment, against a throwaway AIRFLOW_HOME.

Airflow reads its configuration on first import, so the environment is set here, before any test imports it.
"""

import os
import tempfile
from pathlib import Path

from mledge.contracts import AIRFLOW_EXECUTORS

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"

os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="mledge-airflow-test-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__EXECUTOR"] = AIRFLOW_EXECUTORS  # as the stack runs it: site tasks name EdgeExecutor
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
# Airflow's own limit on a DAG file's import time: a slower file becomes an import error.
os.environ["AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT"] = "1.0"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"



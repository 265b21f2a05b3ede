"""federated_training's privacy params: named by the contracts, passed to `mledge fl start`."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from mledge import contracts

DAGS = Path(__file__).resolve().parents[3] / "dags"


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS / "federated_training.py")).dags["federated_training"]


def test_privacy_is_a_param_with_the_contracts_modes_and_none_by_default(dag):
    schema = dag.params.get_param("privacy").schema
    assert schema["enum"] == list(contracts.PRIVACY_MODES) == ["none", "dp", "secagg", "secagg-dp"]
    assert schema["values_display"] == contracts.PRIVACY_MODES
    assert dag.params["privacy"] == contracts.DEFAULT_PRIVACY == "none"
    assert dag.params["dp_epsilon"] == contracts.DP_EPSILON


def test_a_mode_outside_the_enum_is_refused(dag):
    from airflow.sdk.exceptions import ParamValidationError

    param = copy.copy(dag.params.get_param("privacy"))
    assert param.resolve("secagg-dp") == "secagg-dp"
    with pytest.raises(ParamValidationError):
        param.resolve("homomorphic")


def test_the_start_task_passes_the_mode_and_epsilon_to_the_flower_run(dag):
    arguments = dag.get_task("start_flower_run").arguments
    assert arguments[arguments.index("--privacy") + 1] == "{{ params.privacy }}"
    assert arguments[arguments.index("--dp-epsilon") + 1] == "{{ params.dp_epsilon }}"

"""The operator runs the real workload entry point (`mledge` in the workload environment) and returns its JSON."""

import os
from pathlib import Path

import pytest
from conftest import REPO

from operators.hooks.mledge import MledgeCommandError, MledgeHook
from operators.mledge import MledgeOperator

MLEDGE = os.environ.get("MLEDGE_BIN") or str(REPO / ".venvs" / "workload" / "bin" / "mledge")


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLEDGE_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def test_hook_returns_the_commands_json(home):
    result = MledgeHook(MLEDGE).run(["data", "init", "--batches", "1"])
    assert sorted(result["added"]) == ["plant_a", "plant_b", "plant_c"]
    for paths in result["added"].values():
        assert [Path(p).exists() for p in paths] == [True]
    assert Path(result["data_root"]) == home / "sites"


def test_hook_raises_with_the_commands_own_words(home):
    with pytest.raises(MledgeCommandError) as failure:
        MledgeHook(MLEDGE).run(["models", "promote", "--flower-run-id", "no-such-run"])
    message = str(failure.value)
    assert "exited with 1" in message
    assert "no-such-run" in message


def test_unknown_executable_is_a_clear_error(home):
    with pytest.raises(FileNotFoundError):
        MledgeHook(str(home / "missing" / "mledge")).run(["status"])


def test_operator_renders_templated_arguments(home):
    operator = MledgeOperator(
        task_id="init", arguments=["data", "init", "--batches", "{{ params.batches }}"], executable=MLEDGE
    )
    operator.render_template_fields({"params": {"batches": 2}})
    assert operator.arguments == ["data", "init", "--batches", "2"]
    result = operator.execute(context={})
    assert all(len(paths) == 2 for paths in result["added"].values())

"""fl_train asks for retraining only where drift was confirmed: otherwise it skips and emits no Asset event."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from operators.drift import RequestRetrainingOperator


class _TaskInstance:
    """What the operator reads of its task instance: the decision task's XCom for its own map index."""

    map_index = 0

    def __init__(self, decision: dict) -> None:
        self.decision = decision

    def xcom_pull(self, task_ids: str, key: str, map_indexes: int) -> dict:
        assert (task_ids, key, map_indexes) == ("determine_conceptdrift", "result", 0)
        return self.decision


@pytest.mark.parametrize(
    "decision",
    [
        {"site": "plant_a", "drift": False, "alerts": [{"id": 1, "decision": "no_drift", "status": "resolved"}]},
        {"site": "plant_b", "drift": True, "alerts": [{"id": 2, "decision": "drift", "status": "retraining"}]},
        {},
    ],
    ids=["no-drift", "already-approved", "no-decision"],
)
def test_without_new_confirmed_drift_it_skips_and_emits_nothing(decision):
    operator = RequestRetrainingOperator(
        task_id="fl_train", decision_task_id="determine_conceptdrift", executable="/nonexistent/mledge"
    )
    outlet_events: dict = {}
    with pytest.raises(AirflowSkipException, match="nothing to retrain"):
        operator.execute({"ti": _TaskInstance(decision), "outlet_events": outlet_events})
    assert outlet_events == {}

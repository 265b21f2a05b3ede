"""Operators for the drift DAGs: branch on what a ``mledge`` command found, and ask for retraining.

Both run the workload entry point through ``MledgeHook`` like every other task; the decision logic lives in the
``drift`` library behind ``mledge drift ...``, the operators only route on its JSON answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from airflow.providers.standard.operators.branch import BaseBranchOperator
from airflow.sdk.exceptions import AirflowSkipException

from mledge.contracts import EVENT_ALERT_IDS, EVENT_REQUESTED_BY, EVENT_SITE
from operators.assets import DRIFT
from operators.hooks.mledge import MledgeHook
from operators.mledge import MledgeOperator

RESULT_KEY = "result"


def _in_group(operator: Any, task_id: str) -> str:
    """A sibling's full task id: inside a (mapped) task group ids carry the group's prefix."""
    group = operator.task_group
    return f"{group.group_id}.{task_id}" if group is not None and group.group_id else task_id


class MledgeBranchOperator(BaseBranchOperator):
    """Run one ``mledge`` command, keep its JSON as XCom ``result``, and follow ``if_true`` or ``if_false``.

    ``decide(result, context)`` says which branch; the other one is skipped (for this map index only). ``always``:
    downstream tasks followed whichever branch is taken.
    """

    template_fields: Sequence[str] = ("arguments",)
    ui_color = "#fff3d6"

    def __init__(
        self,
        *,
        arguments: Sequence[str],
        decide: Callable[[dict, Any], bool],
        if_true: str,
        if_false: str,
        always: Sequence[str] = (),
        executable: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.arguments = list(arguments)
        self.decide, self.if_true, self.if_false = decide, if_true, if_false
        self.always = list(always)
        self.executable = executable

    def choose_branch(self, context: Any) -> str | list[str]:
        result = MledgeHook(self.executable).run(self.arguments) or {}
        context["ti"].xcom_push(key=RESULT_KEY, value=result)
        branch = self.if_true if self.decide(result, context) else self.if_false
        self.log.info("Following %s", branch)
        if not self.always:
            return _in_group(self, branch)
        return [_in_group(self, task_id) for task_id in (branch, *self.always)]


class RequestRetrainingOperator(MledgeOperator):
    """Mark a site's new drift alerts as ``retraining`` and emit the drift Asset event that schedules training.

    Runs only when the drift evaluation confirmed drift and retraining is automatic; with approval required, a
    person approves on the drift review page instead, which emits the same event.
    """

    def __init__(self, *, decision_task_id: str, user: str = "airflow:auto-retrain", **kwargs: Any) -> None:
        kwargs.setdefault("outlets", [DRIFT])
        super().__init__(arguments=[], **kwargs)
        self.decision_task_id, self.user = decision_task_id, user

    def execute(self, context: Any) -> Any:
        ti = context["ti"]
        decision = ti.xcom_pull(
            task_ids=_in_group(self, self.decision_task_id), key=RESULT_KEY, map_indexes=ti.map_index
        ) or {}
        ids = [a["id"] for a in decision.get("alerts", []) if a.get("decision") == "drift" and a.get("status") == "new"]
        if not decision.get("drift") or not ids:
            # Guard: the branch should have skipped this site already (Airflow 3.3 does not always skip one map
            # index of a mapped task group); without confirmed drift no Asset event may be emitted.
            raise AirflowSkipException(f"no new confirmed drift at {decision.get('site', '?')}: nothing to retrain")
        hook = MledgeHook(self.executable)
        for alert_id in ids:
            hook.run(["drift", "review", "--alert-id", alert_id, "--action", "approve", "--user", self.user])
        site = decision.get("site", "")
        context["outlet_events"][DRIFT].extra = {EVENT_SITE: site, EVENT_ALERT_IDS: ids, EVENT_REQUESTED_BY: self.user}
        self.log.info("Drift at %s (alerts %s): retraining requested", site, ids)
        return {EVENT_SITE: site, EVENT_ALERT_IDS: ids}

"""concept_drift_evaluation: data and concept drift at every site, where the data live; retraining on confirmed drift.

migrate_platform_db -> registered_sites -> site_names, then per registered site (dynamic task mapping), in a
mapped task group:

    check_unprocessed -> generate_simulations | skip_generate_simulations -> evaluate_p_value
        -> determine_conceptdrift -> fl_train | skip_training

``migrate_platform_db`` creates or upgrades the platform database (``mledge db migrate``, idempotent) once, before
any site's task reads or writes it. Only statistics, p-values and reports leave a site. ``fl_train`` emits the
``mledge://axis_failures/drift`` Asset event on which ``federated_training`` is scheduled; with
``retraining = approval`` the alerts wait on the drift review page instead. Every task runs the workload entry point
``mledge``; this file only wires.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, task, task_group
from airflow.timetables.trigger import CronTriggerTimetable

from mledge.contracts import (
    DRIFT_DAG_ID,
    DRIFT_SIMULATIONS,
    MAX_DRIFT_SIMULATIONS,
    MIN_DRIFT_SIMULATIONS,
    RETRAINING_AUTO,
    RETRAINING_MODES,
    USE_CASE,
)
from operators.drift import MledgeBranchOperator, RequestRetrainingOperator
from operators.mledge import MledgeOperator

JOIN = "none_failed_min_one_success"  # run after whichever branch ran


def _has_unprocessed(result: dict, context) -> bool:
    return bool(result.get("unprocessed"))


def _retrain_now(result: dict, context) -> bool:
    return bool(result.get("drift")) and context["params"]["retraining"] == RETRAINING_AUTO


with DAG(
    dag_id=DRIFT_DAG_ID,
    description="Evidently data drift and simulated concept-drift p-values per site; retraining on confirmed drift",
    # Next cron time after unpausing, not at once: no start date, and no grace period (run_immediately=0).
    schedule=CronTriggerTimetable(
        os.environ.get("MLEDGE_DRIFT_SCHEDULE_CRON") or "@daily", timezone="UTC", run_immediately=timedelta(0)
    ),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        # 1/(N+1) must fall below the smallest Holm level: the minimum (see mledge.contracts).
        "simulations": Param(
            DRIFT_SIMULATIONS,
            type="integer",
            minimum=MIN_DRIFT_SIMULATIONS,
            maximum=MAX_DRIFT_SIMULATIONS,
            description="Permutations per batch for the concept-drift p-value",
        ),
        "retraining": Param(
            os.environ.get("MLEDGE_RETRAINING", RETRAINING_AUTO),
            enum=list(RETRAINING_MODES),
            description="auto: confirmed drift triggers federated_training; approval: a person approves first",
        ),
    },
    tags=["mledge", USE_CASE, "drift"],
    doc_md=__doc__,
) as dag:
    migrate_platform_db = MledgeOperator(task_id="migrate_platform_db", arguments=["db", "migrate"])
    registered = MledgeOperator(task_id="registered_sites", arguments=["drift", "sites"])
    migrate_platform_db >> registered

    @task
    def site_names(answer: list[str]) -> list[str]:
        """The registered sites, as a plain list to map over (``mledge drift sites`` answers one)."""
        return list(answer)

    @task_group(group_id="site")
    def evaluate_site(site: str) -> None:
        check_unprocessed = MledgeBranchOperator(
            task_id="check_unprocessed",
            arguments=["drift", "check-unprocessed", "--site", site],
            decide=_has_unprocessed,
            if_true="generate_simulations",
            if_false="skip_generate_simulations",
        )
        generate_simulations = MledgeOperator(
            task_id="generate_simulations",
            arguments=["drift", "simulate", "--site", site, "--simulations", "{{ params.simulations }}"],
        )
        skip_generate_simulations = EmptyOperator(task_id="skip_generate_simulations")
        evaluate_p_value = MledgeOperator(
            task_id="evaluate_p_value", arguments=["drift", "p-value", "--site", site], trigger_rule=JOIN
        )
        determine_conceptdrift = MledgeBranchOperator(
            task_id="determine_conceptdrift",
            arguments=["drift", "decide", "--site", site],
            decide=_retrain_now,
            if_true="fl_train",
            if_false="skip_training",
        )
        fl_train = RequestRetrainingOperator(task_id="fl_train", decision_task_id="determine_conceptdrift")
        skip_training = EmptyOperator(task_id="skip_training")

        check_unprocessed >> [generate_simulations, skip_generate_simulations] >> evaluate_p_value
        evaluate_p_value >> determine_conceptdrift >> [fl_train, skip_training]

    evaluate_site.expand(site=site_names(registered.output))

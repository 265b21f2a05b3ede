"""concept_drift_evaluation: data and concept drift at every site, where the data live; retraining on confirmed drift.

migrate_platform_db, then per site, in a task group named after it (P: at the platform, S: on the site's own edge
worker, queue = the site's name; only that machine can read the site's store):

    P state -> S edge_worker -> S check_unprocessed -> S generate_simulations | skip_generate_simulations
        -> S evaluate_p_value -> S measurements -> P determine_conceptdrift -> S publish_decision
        -> P fl_train | skip_training

``migrate_platform_db`` creates or upgrades the platform database (``mledge db migrate``, idempotent) once.
``state`` tells the site which batches are decided already and which champion to evaluate (the site cannot read
the platform database); ``measurements`` sends back statistics and p-values, never a row, and
``determine_conceptdrift`` corrects them, records alerts and marks batches processed at the platform;
``publish_decision`` logs the decision's metrics to the site's MLflow drift experiment (Evidently's reports stay at
the site) and archives the evaluation. ``fl_train`` emits the ``mledge://axis_failures/drift`` Asset event on which
``federated_training`` is scheduled; with ``retraining = approval`` the alerts wait on the drift review page
instead. A site whose edge worker is not connected fails its ``edge_worker`` task by name; the others go on.
Every task runs the workload entry point ``mledge``; this file only wires.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, TaskGroup
from airflow.timetables.trigger import CronTriggerTimetable

from mledge.contracts import (
    DRIFT_DAG_ID,
    DRIFT_SIMULATIONS,
    MAX_DRIFT_SIMULATIONS,
    MIN_DRIFT_SIMULATIONS,
    RETRAINING_AUTO,
    RETRAINING_MODES,
    SITES,
    USE_CASE,
)
from operators.drift import RESULT_KEY, MledgeBranchOperator, RequestRetrainingOperator
from operators.mledge import MledgeOperator
from operators.notifiers import DriftAlertNotifier, RunFailedNotifier
from operators.sites import EdgeWorkerSensor, at_site

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
    on_failure_callback=RunFailedNotifier(),  # mail (operators/notifiers.py; MLEDGE_NOTIFY_EMAIL)
) as dag:
    migrate_platform_db = MledgeOperator(task_id="migrate_platform_db", arguments=["db", "migrate"])

    for site in SITES:
        with TaskGroup(group_id=site):
            # XCom of a sibling task, as the JSON argument of the next step (statistics only, never a row).
            state = f"{{{{ ti.xcom_pull(task_ids='{site}.state') | tojson }}}}"
            measured = f"{{{{ ti.xcom_pull(task_ids='{site}.measurements') | tojson }}}}"
            decided = f"{{{{ ti.xcom_pull(task_ids='{site}.determine_conceptdrift', key='{RESULT_KEY}') | tojson }}}}"

            platform_state = MledgeOperator(task_id="state", arguments=["drift", "state", "--site", site])
            edge_worker = EdgeWorkerSensor(task_id="edge_worker", site=site)
            check_unprocessed = MledgeBranchOperator(
                task_id="check_unprocessed",
                arguments=["drift", "check-unprocessed", "--site", site, "--state", state],
                decide=_has_unprocessed,
                if_true="generate_simulations",
                if_false="skip_generate_simulations",
                **at_site(site),
            )
            generate_simulations = MledgeOperator(
                task_id="generate_simulations",
                arguments=[
                    "drift", "simulate", "--site", site, "--simulations", "{{ params.simulations }}",
                    "--state", state,
                ],
                **at_site(site),
            )
            skip_generate_simulations = EmptyOperator(task_id="skip_generate_simulations")
            evaluate_p_value = MledgeOperator(
                task_id="evaluate_p_value", arguments=["drift", "p-value", "--site", site], trigger_rule=JOIN,
                **at_site(site),
            )
            measurements = MledgeOperator(
                task_id="measurements", arguments=["drift", "measurements", "--site", site, "--state", state],
                **at_site(site),
            )
            determine_conceptdrift = MledgeBranchOperator(
                task_id="determine_conceptdrift",
                arguments=["drift", "decide", "--site", site, "--measurements", measured],
                decide=_retrain_now,
                if_true="fl_train",
                if_false="skip_training",
                always=["publish_decision"],
                on_success_callback=DriftAlertNotifier(),  # mail new confirmed drift (MLEDGE_NOTIFY_EMAIL)
            )
            publish_decision = MledgeOperator(
                task_id="publish_decision",
                arguments=["drift", "publish", "--site", site, "--decision", decided],
                **at_site(site),
            )
            fl_train = RequestRetrainingOperator(task_id="fl_train", decision_task_id="determine_conceptdrift")
            skip_training = EmptyOperator(task_id="skip_training")

            migrate_platform_db >> platform_state >> edge_worker >> check_unprocessed
            check_unprocessed >> [generate_simulations, skip_generate_simulations] >> evaluate_p_value
            evaluate_p_value >> measurements >> determine_conceptdrift >> [fl_train, skip_training]
            determine_conceptdrift >> publish_decision

"""federated_training: one federated training of the axis_failures model, from connected sites to the registry.

migrate_platform_db -> wait_for_supernodes -> start_flower_run -> await_flower_run -> publish_run
    -> register_and_promote, record_training_cost

``migrate_platform_db`` creates or upgrades the platform database (``mledge db migrate``, idempotent) before
anything reads it. Scheduled on data, not on a clock: confirmed (or approved) drift emits the
``mledge://axis_failures/drift`` Asset event and that starts a run. ``MLEDGE_TRAINING_SCHEDULE`` (a cron expression)
adds a time schedule besides it. Trigger it from the UI with the parameters below. ``register_and_promote``
registers the global model and each site's personalised model, links the drift alerts that asked for the training,
and resolves them; ``record_training_cost`` prices each site's compute seconds at its declared instance type into
the cost store. Every task runs the workload entry point ``mledge``; this file only wires.

Nothing lost, nothing doubled: every task may be retried. ``start_flower_run`` finds the Flower run this DAG run
started and reuses it; ``await_flower_run`` starts the training again when its run failed (a SuperLink restart)
and stops the run when the task is killed; the ServerApp keeps its results at the platform (the run's outbox) and
``publish_run`` sends them to MLflow, retried while MLflow is down; registration finds the versions it made.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, Param
from airflow.timetables.trigger import CronTriggerTimetable

from mledge.contracts import (
    DEFAULT_MODEL_FAMILY,
    DEFAULT_PRIVACY,
    DEFAULT_STRATEGY,
    DP_EPSILON,
    LEARNING_RATE,
    LOCAL_EPOCHS,
    MIN_CLIENTS,
    MODEL_FAMILIES,
    NODE_WAIT_TIMEOUT_S,
    PRIVACY_MODES,
    ROUNDS,
    RUN_TIMEOUT_S,
    SITES,
    STRATEGIES,
    TRAINING_DAG_ID,
    USE_CASE,
)
from operators.assets import DRIFT, drift_alert_ids
from operators.mledge import MledgeOperator
from operators.notifiers import RunFailedNotifier

# The run the training ended with (await_flower_run may have had to start it again).
RUN_ID = "{{ ti.xcom_pull(task_ids='await_flower_run')['run_id'] }}"

CRON = os.environ.get("MLEDGE_TRAINING_SCHEDULE")

with DAG(
    dag_id=TRAINING_DAG_ID,
    description=f"Federated training of the {USE_CASE} model across the sites, then registry promotion",
    schedule=(
        AssetOrTimeSchedule(timetable=CronTriggerTimetable(CRON, timezone="UTC"), assets=[DRIFT]) if CRON else [DRIFT]
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},  # every task is safe to retry
    params={
        "min_clients": Param(
            MIN_CLIENTS, type="integer", minimum=1, maximum=1000, description="SuperNodes that must be connected"
        ),
        "node_wait_timeout_s": Param(
            NODE_WAIT_TIMEOUT_S, type="integer", minimum=1, maximum=3600, description="How long to wait for them"
        ),
        "rounds": Param(
            ROUNDS, type="integer", minimum=1, maximum=100,
            description="Most federated rounds (a run stops earlier once the sites' validation loss stops improving)",
        ),
        "local_epochs": Param(
            LOCAL_EPOCHS, type="integer", minimum=1, maximum=50, description="Epochs per round at a site"
        ),
        "learning_rate": Param(LEARNING_RATE, type="number", exclusiveMinimum=0),
        "model_family": Param(
            DEFAULT_MODEL_FAMILY,
            type="string",
            enum=list(MODEL_FAMILIES),
            values_display=dict(MODEL_FAMILIES),
            description="The project's model family (xgboost takes strategy fedavg: Flower's FedXgbBagging; "
            "robust rules apply to mlp only)",
        ),
        "strategy": Param(
            DEFAULT_STRATEGY,
            type="string",
            enum=list(STRATEGIES),
            values_display=dict(STRATEGIES),
            description="Aggregation rule (robust rules reject or down-weight poisoned updates)",
        ),
        "privacy": Param(
            DEFAULT_PRIVACY,
            type="string",
            enum=list(PRIVACY_MODES),
            values_display=dict(PRIVACY_MODES),
            description="Secure aggregation and/or differential privacy; every mode but none runs strategy fedavg "
            "(another strategy fails the run's start, saying why)",
        ),
        "dp_epsilon": Param(
            DP_EPSILON, type="number", exclusiveMinimum=0, maximum=100,
            description="dp, secagg-dp: the run's target epsilon (delta 1e-5), reached after its rounds",
        ),
        "attack_site": Param(
            "",
            type="string",
            enum=["", *SITES],
            values_display={"": "none", **{site: site for site in SITES}},
            description="Simulation only: a site that poisons its updates in this run (none: no attack)",
        ),
        "attack_profile": Param(
            "",
            type="string",
            description="Simulation only: that site's attack, e.g. attack='scaling' attack-scale=10 "
            "(fl/simulation/attacks.py)",
        ),
        "run_timeout_s": Param(
            RUN_TIMEOUT_S, type="integer", minimum=10, maximum=86400, description="Limit for the Flower run"
        ),
        "site_margin": Param(
            0.0, type="number", minimum=0, description="How much a site's new model must beat its champion (F1)"
        ),
    },
    tags=["mledge", USE_CASE, "federated"],
    doc_md=__doc__,
    user_defined_macros={"drift_alert_ids": drift_alert_ids},
    on_failure_callback=RunFailedNotifier(),  # mail (operators/notifiers.py; MLEDGE_NOTIFY_EMAIL)
) as dag:
    migrate_platform_db = MledgeOperator(task_id="migrate_platform_db", arguments=["db", "migrate"])
    wait_for_supernodes = MledgeOperator(
        task_id="wait_for_supernodes",
        arguments=[
            "fl", "wait-nodes",
            "--min-nodes", "{{ params.min_clients }}",
            "--timeout", "{{ params.node_wait_timeout_s }}",
        ],
    )
    start_flower_run = MledgeOperator(
        task_id="start_flower_run",
        arguments=[
            "fl", "start",
            "--rounds", "{{ params.rounds }}",
            "--local-epochs", "{{ params.local_epochs }}",
            "--learning-rate", "{{ params.learning_rate }}",
            "--min-nodes", "{{ params.min_clients }}",
            "--strategy", "{{ params.strategy }}",
            "--model-family", "{{ params.model_family }}",
            "--privacy", "{{ params.privacy }}",
            "--dp-epsilon", "{{ params.dp_epsilon }}",
            "--attack-site", "{{ params.attack_site }}",
            "--attack-profile", "{{ params.attack_profile }}",
            "--dag-run-id", "{{ run_id }}",
        ],
    )
    await_flower_run = MledgeOperator(
        task_id="await_flower_run",
        arguments=[
            "fl", "await", "--run-id", "{{ ti.xcom_pull(task_ids='start_flower_run')['run_id'] }}",
            "--dag-run-id", "{{ run_id }}", "--timeout", "{{ params.run_timeout_s }}",
        ],
    )
    publish_run = MledgeOperator(
        task_id="publish_run",
        arguments=["fl", "publish", "--flower-run-id", RUN_ID],
        retries=6,  # MLflow down: 2, 4, 8 ... minutes; the results wait at the platform meanwhile
        retry_exponential_backoff=2.0,
    )
    register_and_promote = MledgeOperator(
        task_id="register_and_promote",
        arguments=[
            "models", "promote", "--flower-run-id", RUN_ID,
            "--site-margin", "{{ params.site_margin }}",
            # Only the alerts whose Asset events started this run are resolved by it.
            "--drift-alert-ids", "{{ drift_alert_ids(triggering_asset_events) | tojson }}",
        ],
    )

    record_training_cost = MledgeOperator(
        task_id="record_training_cost",
        arguments=[
            "costs", "record-training", "--flower-run-id", RUN_ID,
            "--seconds-json", "{{ ti.xcom_pull(task_ids='await_flower_run')['compute_seconds'] | tojson }}",
        ],
    )

    migrate_platform_db >> wait_for_supernodes >> start_flower_run >> await_flower_run >> publish_run
    publish_run >> [register_and_promote, record_training_cost]

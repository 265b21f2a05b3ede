"""data_collection: each site appends its next batch to its own store, validated; bad batches go to quarantine.

<site>.edge_worker -> <site>.collect  (per site, at the site) -> check_quarantine  (platform)

``collect`` runs on the site's own edge worker (queue = the site's name): only that machine can read the store.
A batch that fails validation (missing or extra columns, wrong types, too many NaNs, unreadable) is moved to the
site's ``quarantine/`` with a reason file, never deleted; ``check_quarantine`` (at the platform, which receives
file names and reasons, never rows) then fails the run naming every quarantined file and every site that did not
collect (its edge worker not connected, say). Every task runs the workload entry point ``mledge``.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import DAG, Param, TaskGroup, task
from airflow.timetables.trigger import CronTriggerTimetable

from mledge.contracts import COLLECTION_DAG_ID, ROWS_PER_BATCH, SITES, USE_CASE
from operators.mledge import MledgeOperator
from operators.notifiers import RunFailedNotifier
from operators.sites import EdgeWorkerSensor, at_site

with DAG(
    dag_id=COLLECTION_DAG_ID,
    description="Append a validated batch to every site's local store; quarantine malformed batches",
    # Next cron time after unpausing, not at once: no start date, and no grace period (run_immediately=0).
    schedule=CronTriggerTimetable(
        os.environ.get("MLEDGE_COLLECTION_SCHEDULE") or "@hourly", timezone="UTC", run_immediately=timedelta(0)
    ),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "rows": Param(ROWS_PER_BATCH, type="integer", minimum=10, maximum=1_000_000, description="Rows per new batch")
    },
    tags=["mledge", USE_CASE, "data"],
    doc_md=__doc__,
    on_failure_callback=RunFailedNotifier(),  # mail (operators/notifiers.py; MLEDGE_NOTIFY_EMAIL)
) as dag:
    collected = []
    for site in SITES:
        with TaskGroup(group_id=site):
            collect = MledgeOperator(
                task_id="collect",
                # The run id makes a retried collection find the batch it made: one batch per run and site.
                arguments=[
                    "drift", "collect", "--site", site, "--rows", "{{ params.rows }}", "--run-id", "{{ run_id }}",
                ],
                **at_site(site),
            )
            EdgeWorkerSensor(task_id="edge_worker", site=site) >> collect
        collected.append(collect)

    @task(trigger_rule="all_done")
    def check_quarantine(ti=None) -> dict:
        """Fail the run, naming each quarantined file and why, and each site that did not collect."""
        problems, accepted = [], {}
        for site in SITES:
            result = ti.xcom_pull(task_ids=f"{site}.collect")
            if result is None:
                problems.append(f"{site}: no batch collected (see its edge_worker and collect tasks)")
                continue
            for name, r in result["sites"].items():
                accepted[name] = r["accepted"]
                problems += [f"{name}: {q['file']} quarantined ({q['reason']})" for q in r["quarantined"]]
        if problems:
            raise ValueError("; ".join(problems))
        return {"accepted": accepted}

    collected >> check_quarantine()

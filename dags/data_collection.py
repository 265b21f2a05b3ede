"""data_collection: each site appends its next batch to its own store, validated; bad batches go to quarantine.

collect (one mapped task per registered site) -> check_quarantine

A batch that fails validation (missing or extra columns, wrong types, too many NaNs, unreadable) is moved to the
site's ``quarantine/`` with a reason file, never deleted; ``check_quarantine`` then fails the run naming every
quarantined file, so the run says so in the UI. Every task runs the workload entry point ``mledge``.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import DAG, Param, task
from airflow.timetables.trigger import CronTriggerTimetable

from mledge.contracts import COLLECTION_DAG_ID, ROWS_PER_BATCH, USE_CASE
from operators.mledge import MledgeOperator

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
) as dag:
    sites = MledgeOperator(task_id="registered_sites", arguments=["drift", "sites"])

    @task
    def collection_commands(registered: list[str], params: dict | None = None) -> list[list[str]]:
        """One ``mledge drift collect`` per site: on a real deployment each runs where its site's data live."""
        return [["drift", "collect", "--site", s, "--rows", str(params["rows"])] for s in registered]

    collect = MledgeOperator.partial(task_id="collect").expand(arguments=collection_commands(sites.output))

    @task
    def check_quarantine(results: list[dict]) -> dict:
        """Fail the run, naming each quarantined file and why, when any batch was quarantined."""
        by_site = {site: r for result in results for site, r in result["sites"].items()}
        quarantined = [f"{site}: {q['file']} ({q['reason']})" for site, r in by_site.items() for q in r["quarantined"]]
        if quarantined:
            raise ValueError("quarantined batches: " + "; ".join(quarantined))
        return {"accepted": {site: r["accepted"] for site, r in by_site.items()}}

    check_quarantine(collect.output)

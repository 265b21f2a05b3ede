"""Mail from the notifiers (operators/notifiers.py), received by a real SMTP server that the test starts.

The server is aiosmtpd on a free local port, requiring a login; Airflow reaches it through the SMTP provider over an
Airflow Connection given as ``AIRFLOW_CONN_*`` (the credentials are the Connection's, nowhere else). The callbacks
run as Airflow runs them: ``dag.test()`` executes a DAG run in this process against the metadata database, calls
the task's ``on_success_callback`` after the task and the DAG's ``on_failure_callback`` when the run fails. The
failing task is the real ``mledge fl wait-nodes`` (no SuperNode is connected here).
"""

from __future__ import annotations

import email
import email.policy
import json
import os
from datetime import datetime
from html import unescape

import pytest
from conftest import REPO

MLEDGE = os.environ.get("MLEDGE_BIN") or str(REPO / ".venvs" / "workload" / "bin" / "mledge")
SMTP_USER, SMTP_PASSWORD = "airflow-mailer", "mailer-test-password"  # pragma: allowlist secret
RECIPIENTS = ["ops@mledge.test", "ml-team@mledge.test"]


class Inbox:
    """aiosmtpd handler: keeps every message it accepts, with who sent it and as which login."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        body = message.get_body(("html", "plain"))
        self.messages.append({
            "from": envelope.mail_from, "to": list(envelope.rcpt_tos), "login": session.auth_data,
            "subject": str(message["subject"]), "html": unescape(body.get_content()) if body else "",
        })
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp(free_port, monkeypatch):
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            SMTP_USER.encode(), SMTP_PASSWORD.encode())
        return AuthResult(success=ok, auth_data=auth_data.login.decode() if ok else None)

    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=authenticate, auth_required=True,
                            auth_require_tls=False)
    controller.start()
    connection = {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "login": SMTP_USER,
                  "password": SMTP_PASSWORD,
                  "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": 10,
                            "from_email": "airflow@mledge.test"}}
    monkeypatch.setenv("AIRFLOW_CONN_MLEDGE_TEST_SMTP", json.dumps(connection))
    monkeypatch.setenv("MLEDGE_SMTP_CONN_ID", "mledge_test_smtp")
    monkeypatch.setenv("MLEDGE_NOTIFY_EMAIL", ",".join(RECIPIENTS))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:8080")
    yield inbox
    controller.stop()


@pytest.fixture(scope="module")
def airflow_db(tmp_path_factory):
    from airflow.utils.db import resetdb

    home = tmp_path_factory.mktemp("mledge-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLEDGE_HOME", str(home))
        env.setenv("MLEDGE_BIN", MLEDGE)
        resetdb()
        yield home


def run_dag(dag):
    """``dag.test()`` after storing the DAG as the dag-processor would (dag.test() runs serialized DAGs only)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag.test()


def drift_decision(site: str, alerts: list[dict]) -> dict:
    """What ``mledge drift decide`` answers (drift.decision.decide), as determine_conceptdrift keeps it."""
    return {"site": site, "drift": any(a["decision"] == "drift" for a in alerts), "data_drift": True,
            "concept_drift": False, "label_rate_anomaly": False, "alerts": alerts, "batches": {}, "waiting": [],
            "evaluation_id": 7}


def alert(alert_id: int, site: str, batch: str, decision: str, p_value: float) -> dict:
    status = "new" if decision == "drift" else "resolved"
    return {"id": alert_id, "site": site, "batch": batch, "kind": "data", "statistic": 0.4, "p_value": p_value,
            "decision": decision, "report_uri": None, "status": status, "created_at": "2026-11-20T10:00:00+00:00",
            "updated_at": "2026-11-20T10:00:00+00:00", "updated_by": "system", "note": "", "details": {}}


def run_decision_dag(dag_id: str, decision: dict, retraining: str):
    """A DAG whose determine_conceptdrift task keeps ``decision`` as the real one does, with the notifier."""
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG, Param

    from operators.drift import RESULT_KEY
    from operators.notifiers import DriftAlertNotifier

    def keep(ti=None):
        ti.xcom_push(key=RESULT_KEY, value=decision)

    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
             params={"retraining": Param(retraining, enum=["auto", "approval"])}) as dag:
        PythonOperator(task_id="determine_conceptdrift", python_callable=keep,
                       on_success_callback=DriftAlertNotifier())
    return run_dag(dag)


def test_confirmed_drift_with_approval_mails_that_an_approval_waits(smtp, airflow_db):
    decision = drift_decision("plant_b", [alert(41, "plant_b", "batch-000005", "drift", 3.5e-7),
                                          alert(42, "plant_b", "batch-000006", "drift", 0.0004)])
    run = run_decision_dag("mledge_notify_approval", decision, "approval")
    assert run.state == "success"
    (mail,) = smtp.messages
    assert mail["subject"] == "[MLEDGE] Drift confirmed at plant_b: 2 new drift alerts, approval waiting"
    assert mail["to"] == RECIPIENTS and mail["from"] == "airflow@mledge.test"
    assert mail["login"] == SMTP_USER  # the Connection's credentials, checked by the server
    html = mail["html"]
    assert "approve or dismiss" in html and 'href="http://airflow.example:8080/plugin/mledge-drift"' in html
    assert "#41" in html and "batch-000005" in html and "3.5e-07" in html and "#42" in html
    assert f'/dags/mledge_notify_approval/runs/{run.run_id.replace(":", "%3A").replace("+", "%2B")}' in html


def test_drift_in_auto_mode_says_retraining_was_requested_and_clean_batches_send_nothing(smtp, airflow_db):
    run_decision_dag("mledge_notify_auto", drift_decision("plant_c", [alert(43, "plant_c", "batch-000007", "drift",
                                                                              0.001)]), "auto")
    (mail,) = smtp.messages
    assert mail["subject"] == "[MLEDGE] Drift confirmed at plant_c: 1 new drift alert, retraining requested"
    assert "mledge://axis_failures/drift" in mail["html"]

    run_decision_dag("mledge_notify_clean", drift_decision("plant_a", [alert(44, "plant_a", "batch-000005",
                                                                               "no_drift", 0.81)]), "auto")
    assert len(smtp.messages) == 1  # a clean evaluation is no news


def test_a_failed_run_mails_which_task_failed(smtp, airflow_db):
    from airflow.sdk import DAG

    from operators.mledge import MledgeOperator
    from operators.notifiers import RunFailedNotifier

    with DAG("mledge_notify_failure", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
             on_failure_callback=RunFailedNotifier()) as dag:
        MledgeOperator(task_id="wait_for_supernodes", arguments=["fl", "wait-nodes", "--min-nodes", "3",
                                                                 "--timeout", "1"], executable=MLEDGE)
    run = run_dag(dag)
    assert run.state == "failed"
    (mail,) = smtp.messages
    assert mail["subject"] == "[MLEDGE] mledge_notify_failure run failed at wait_for_supernodes"
    assert mail["login"] == SMTP_USER and mail["to"] == RECIPIENTS
    assert run.run_id in mail["html"] and "Failed task: <b>wait_for_supernodes</b>" in mail["html"]
    assert "http://airflow.example:8080/dags/mledge_notify_failure/runs/" in mail["html"]


def test_without_recipients_nothing_is_sent(smtp, airflow_db, monkeypatch):
    monkeypatch.delenv("MLEDGE_NOTIFY_EMAIL")
    run_decision_dag("mledge_notify_nobody", drift_decision("plant_b", [alert(45, "plant_b", "batch-000009", "drift",
                                                                               0.002)]), "approval")
    assert smtp.messages == []

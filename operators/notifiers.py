"""Mail when a person should look: a new confirmed drift alert (and whether an approval is waiting), a failed run.

Airflow notifiers (``airflow.sdk.bases.notifier.BaseNotifier``), attached as callbacks in the DAG files:

- ``DriftAlertNotifier``: ``on_success_callback`` of ``determine_conceptdrift``; mails when the decision recorded
  new drift alerts, and with ``retraining = approval`` says that an approval is waiting (link to the Drift page);
- ``RunFailedNotifier``: a DAG's ``on_failure_callback`` (``federated_training``, ``data_collection``,
  ``concept_drift_evaluation``); mails which run failed, at which task, why, with links.

Mail goes through the SMTP provider (``SmtpNotifier``, ``apache-airflow-providers-smtp``) over the Airflow
Connection ``MLEDGE_SMTP_CONN_ID`` (default ``smtp_default``: host, port, login and password, ``from_email`` and
``disable_tls``/``disable_ssl`` in its extra), so credentials live in a Connection (or an ``AIRFLOW_CONN_*``
variable), never here. Recipients: ``MLEDGE_NOTIFY_EMAIL`` (comma-separated); unset, nothing is sent (notifications
are opt-in) and the callback says so in the log. Sender: ``MLEDGE_NOTIFY_FROM``, else the Connection's
``from_email``. Links point at the Airflow UI (``[api] base_url``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from airflow.sdk.bases.notifier import BaseNotifier

from mledge.contracts import DRIFT_ASSET_URI, RETRAINING_APPROVAL
from operators.drift import RESULT_KEY

NOTIFY_TO_ENV = "MLEDGE_NOTIFY_EMAIL"
NOTIFY_FROM_ENV = "MLEDGE_NOTIFY_FROM"
SMTP_CONN_ENV = "MLEDGE_SMTP_CONN_ID"
DEFAULT_SMTP_CONN_ID = "smtp_default"
SUBJECT_PREFIX = "[MLEDGE]"
# The Airflow UI's routes: the plugin pages framed by the UI, and a DAG run's grid.
DRIFT_PAGE_ROUTE = "plugin/mledge-drift"


@dataclass(frozen=True)
class Mail:
    subject: str
    html: str


def recipients(environ: Mapping[str, str] | None = None) -> list[str]:
    value = (os.environ if environ is None else environ).get(NOTIFY_TO_ENV, "")
    return [address.strip() for address in value.split(",") if address.strip()]


def airflow_ui_url() -> str:
    """The Airflow UI as people reach it: ``[api] base_url`` (the local stack sets it), else localhost:8080."""
    from airflow.configuration import conf

    return (conf.get("api", "base_url", fallback=None) or "http://127.0.0.1:8080").rstrip("/")


def dag_run_url(dag_id: str, run_id: str, task_id: str | None = None) -> str:
    url = f"{airflow_ui_url()}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
    return f"{url}/tasks/{quote(task_id, safe='')}" if task_id else url


def _page(title: str, paragraphs: Sequence[str], rows: Sequence[Sequence[str]] = (), header: Sequence[str] = ()) -> str:
    """A plain HTML mail: a heading, paragraphs (already escaped) and an optional table (escaped here)."""
    parts = [f"<h2>{escape(title)}</h2>"] + [f"<p>{p}</p>" for p in paragraphs]
    if rows:
        head = "".join(f"<th align='left'>{escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        table = "<table cellpadding='4' border='1' style='border-collapse:collapse'>"
        parts.append(f"{table}<tr>{head}</tr>{body}</table>")
    return "<html><body>" + "".join(parts) + "</body></html>"


def _link(url: str, text: str) -> str:
    return f'<a href="{escape(url, quote=True)}">{escape(text)}</a>'


class MledgeNotifier(BaseNotifier):
    """Compose a mail from the callback's context (``compose``) and send it with the SMTP provider's notifier."""

    def __init__(self, *, to: str | Sequence[str] | None = None, smtp_conn_id: str | None = None,
                 from_email: str | None = None) -> None:
        super().__init__()
        self.to = to
        self.smtp_conn_id = smtp_conn_id
        self.from_email = from_email

    def compose(self, context: Mapping[str, Any]) -> Mail | None:
        """The mail for this context, or None when there is nothing to tell."""
        raise NotImplementedError

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing here is a template: the mail is composed from the context, and an alert's text is never rendered.
        (A DAG callback under ``dag.test()`` gets the serialized DAG, which has no template environment.)"""

    def notify(self, context: Any) -> None:
        mail = self.compose(context)
        if mail is None:
            self.log.info("%s: nothing to notify", type(self).__name__)
            return
        to = ([self.to] if isinstance(self.to, str) else list(self.to)) if self.to else recipients()
        if not to:
            self.log.info("No recipients (set %s): not sending %r", NOTIFY_TO_ENV, mail.subject)
            return
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        conn_id = self.smtp_conn_id or os.environ.get(SMTP_CONN_ENV) or DEFAULT_SMTP_CONN_ID
        sender = self.from_email or os.environ.get(NOTIFY_FROM_ENV) or None
        # Subject and body are final: the provider renders only what is missing (the sender, from the Connection),
        # with a plain template environment rather than the DAG's.
        plain = {k: v for k, v in context.items() if k != "dag"}
        SmtpNotifier(to=to, from_email=sender, smtp_conn_id=conn_id, subject=mail.subject,
                     html_content=mail.html).notify(plain)
        self.log.info("Mailed %r to %s", mail.subject, ", ".join(to))


def _task_instance(context: Mapping[str, Any]) -> Any:
    return context.get("ti") or context.get("task_instance")


class DriftAlertNotifier(MledgeNotifier):
    """On success of ``determine_conceptdrift``: mail the new drift alerts that this decision recorded.

    Reads the decision (``mledge drift decide``) that the task kept as XCom ``result``; a decision without new
    confirmed drift sends nothing. With ``retraining = approval`` the mail says an approval is waiting and links
    to the Drift page; otherwise it says retraining was requested.
    """

    def compose(self, context: Mapping[str, Any]) -> Mail | None:
        ti = _task_instance(context)
        decision = ti.xcom_pull(task_ids=ti.task_id, key=RESULT_KEY, map_indexes=ti.map_index) if ti else None
        return drift_mail(decision or {}, context)


def drift_mail(decision: Mapping[str, Any], context: Mapping[str, Any]) -> Mail | None:
    new = [a for a in decision.get("alerts") or [] if a.get("decision") == "drift" and a.get("status") == "new"]
    if not decision.get("drift") or not new:
        return None
    site = decision.get("site") or new[0].get("site")
    approval = (context.get("params") or {}).get("retraining") == RETRAINING_APPROVAL
    count = f"{len(new)} new drift alert" + ("s" if len(new) > 1 else "")
    what = "approval waiting" if approval else "retraining requested"
    subject = f"{SUBJECT_PREFIX} Drift confirmed at {site}: {count}, {what}"
    drift_page = f"{airflow_ui_url()}/{DRIFT_PAGE_ROUTE}"
    own_page = f"{airflow_ui_url()}/mledge/drift?{urlencode({'site': site})}"
    if approval:
        action = (f"Retraining waits for a person: approve or dismiss on the {_link(drift_page, 'Drift page')} "
                  f"(this site's alerts: {_link(own_page, own_page)}). Approving emits the Asset event "
                  f"<code>{escape(DRIFT_ASSET_URI)}</code> that starts federated training.")
    else:
        action = (f"Retraining was requested automatically (Asset event <code>{escape(DRIFT_ASSET_URI)}</code>). "
                  f"Review on the {_link(drift_page, 'Drift page')}.")
    paragraphs = [f"The drift evaluation confirmed drift at <b>{escape(str(site))}</b>.", action]
    dag, run_id = context.get("dag"), context.get("run_id")
    if dag is not None and run_id:
        paragraphs.append("Evaluation run: " + _link(dag_run_url(dag.dag_id, run_id), str(run_id)))
    rows = [(f"#{a.get('id')}", a.get("batch"), a.get("kind"),
             "–" if a.get("p_value") is None else f"{a['p_value']:.3g}", a.get("status")) for a in new]
    html = _page(f"Drift confirmed at {site}", paragraphs, rows, ("Alert", "Batch", "Kind", "p-value", "Status"))
    return Mail(subject, html)


class RunFailedNotifier(MledgeNotifier):
    """A DAG's ``on_failure_callback`` (or a task's): which run failed, at which task, why, with links."""

    def compose(self, context: Mapping[str, Any]) -> Mail | None:
        dag = context.get("dag")
        dag_run = context.get("dag_run")
        dag_id = getattr(dag, "dag_id", None) or getattr(dag_run, "dag_id", None) or "a DAG"
        run_id = context.get("run_id") or getattr(dag_run, "run_id", None)
        ti = _task_instance(context)
        task_id = getattr(ti, "task_id", None)
        if task_id and getattr(ti, "map_index", -1) not in (None, -1):
            task_id = f"{task_id}[{ti.map_index}]"
        exception, reason = context.get("exception"), context.get("reason")
        subject = f"{SUBJECT_PREFIX} {dag_id} run failed" + (f" at {task_id}" if task_id else "")
        paragraphs = [f"The run <b>{escape(str(run_id))}</b> of <b>{escape(dag_id)}</b> failed."]
        if task_id:
            paragraphs.append(f"Failed task: <b>{escape(task_id)}</b>.")
        if exception:
            paragraphs.append(f"Error: <code>{escape(f'{type(exception).__name__}: {exception}')}</code>")
        if reason:
            paragraphs.append(f"Airflow's reason: {escape(str(reason))}.")
        if run_id:
            paragraphs.append("Run: " + _link(dag_run_url(dag_id, run_id), "open it in Airflow"))
            if getattr(ti, "task_id", None):
                paragraphs.append("Task log: " + _link(dag_run_url(dag_id, run_id, ti.task_id), ti.task_id))
        return Mail(subject, _page(f"{dag_id} run failed", paragraphs))

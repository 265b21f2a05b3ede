"""The FastAPI app the api-server mounts under ``/mledge``: HTML pages for people, the same data as JSON.

| route                                   | what                                                              |
|-----------------------------------------|-------------------------------------------------------------------|
| GET  /federation                        | Federation page: sites, readiness, last runs per round, models, cost |
| GET  /drift?site=&status=&decision=     | drift review page (decision=drift unless chosen), per-site timeline |
| POST /drift/alerts/{id}/{action}        | acknowledge, dismiss or approve (form buttons; redirects back)    |
| GET  /costs?project=&from=&until=       | Costs page: daily cost per provider chart, totals, recommend form |
| POST /costs/recommend                   | the recommendation form                                           |
| GET  /api/me                            | the logged-in user and what they may do                           |
| GET  /api/federation                    | ``mledge console federation --json`` and ``cost_this_month``      |
| GET  /api/drift/alerts?site=&status=&decision= | alerts as ``mledge drift alerts --json`` gives them (any decision) |
| POST /api/drift/alerts/{id}/review      | ``{"action": ...}`` -> ``{"alert": {...}, "asset_event": {...}}`` |
| GET  /api/costs/report?project=&from=&to= | ``mledge costs report --json --chart-svg`` (``to`` exclusive)   |
| GET  /api/costs/recommend?vcpus=&memory_gib=&gpus=&gpu_class=&regions=&hours= | ``mledge costs recommend --json`` |

Anonymous requests get 401 on ``/api`` and a redirect to Airflow's login page elsewhere; a role without the
permission gets 403 (see ``access``). A failing ``mledge`` command is shown in an error box (JSON: 502).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from mledge.contracts import (
    ALERT_ACTIONS,
    ALERT_DECISIONS,
    ALERT_STATUSES,
    ALERT_TRANSITIONS,
    CHAMPION,
    DRIFT_ASSET_URI,
    REVIEW_ACTIONS,
)
from operators.ui import URL_PREFIX, access, asset_events, charts, forms, links, workload
from operators.ui.access import UserDep
from operators.ui.workload import WorkloadError

HERE = Path(__file__).resolve().parent
# Which buttons an alert in a given status offers (derived from the transitions; the workload command has the
# last word). Acknowledging a dismissed alert reopens it.
ACTIONS_BY_STATUS = {
    status: tuple(a for a in REVIEW_ACTIONS if ALERT_ACTIONS[a] in allowed)
    for status, allowed in ALERT_TRANSITIONS.items()
    if any(ALERT_ACTIONS[a] in allowed for a in REVIEW_ACTIONS)
}
ACTION_LABELS = {"acknowledge": "Acknowledge", "dismiss": "Dismiss", "approve": "Approve retraining"}
DONE_WORDS = {"acknowledge": "acknowledged", "dismiss": "dismissed", "approve": "approved for retraining"}
_DAG_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
# The drift page opens on confirmed drift; "any" shows every evaluation (the clean ones are recorded too).
DEFAULT_DECISION = "drift"
ANY = "any"
DECISION_LABELS = {"drift": "drift (confirmed)", "no_drift": "no drift", ANY: "any decision"}
FEDERATION_RUNS = 5

# Our own pages only load our own files; the chart is an <img> data URI, so nothing in it can run.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'self'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


# --- formatting ------------------------------------------------------------------------------------------


def money(value: Any, digits: int = 2) -> str:
    """Amounts arrive as Decimal strings (or numbers): shown exactly rounded, never through a float."""
    try:
        return f"{Decimal(str(value)):,.{digits}f}"
    except (InvalidOperation, ValueError):
        return "" if value is None else str(value)


def number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{x:.2e}" if x and abs(x) < 10 ** -digits else f"{x:.{digits}f}"


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(money=money, number=number)

app = FastAPI(title="MLEDGE", docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
api = APIRouter(prefix="/api")


@app.middleware("http")
async def security_headers(request: Request, call_next: Any) -> Response:
    response = await call_next(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _base(request: Request) -> str:
    """Where this app is mounted (``/mledge``, behind any base_url path): links are built from it."""
    return request.scope.get("root_path", "").rstrip("/")


def _airflow(request: Request) -> str:
    """The Airflow UI's own root (the mount point less ``/mledge``): links to DAG runs open there, in the top window."""
    base = _base(request)
    return base[: -len(URL_PREFIX)] if base.endswith(URL_PREFIX) else ""


def _is_api(request: Request) -> bool:
    return request.url.path.removeprefix(_base(request)).startswith("/api/")


def _box(title: str, exc: Exception | str) -> dict[str, str]:
    return {"title": title, "message": str(exc)}


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if _is_api(request):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    # No (valid) session: the login page, which brings the person back here afterwards.
    if exc.status_code == status.HTTP_401_UNAUTHORIZED or exc.detail == "Invalid JWT token":
        return RedirectResponse(access.login_url(request), status_code=status.HTTP_303_SEE_OTHER)
    context = {"base": _base(request), "title": "Error", "page": "", "user_name": None, "can": {},
               "errors": [_box(f"HTTP {exc.status_code}", exc.detail)]}
    return templates.TemplateResponse(request, "error.html", context, status_code=exc.status_code)


def _context(request: Request, user: Any, page: str, title: str) -> dict[str, Any]:
    return {
        "base": _base(request), "page": page, "title": title, "user_name": user.get_name(),
        "can": access.permissions(user), "errors": [], "notice": None,
    }


# --- drift review ----------------------------------------------------------------------------------------


def _decision(value: str | None) -> str:
    """The decision filter: a known decision, or any (empty or unknown values show every decision)."""
    return value if value in ALERT_DECISIONS else ANY


def _filter(alerts: list[dict], site: str, status_: str, decision: str = ANY) -> list[dict]:
    return [
        a for a in alerts
        if (not site or a.get("site") == site) and (not status_ or a.get("status") == status_)
        and (decision == ANY or a.get("decision") == decision)
    ]


def _timelines(alerts: list[dict], sites: list[str]) -> list[dict[str, Any]]:
    """One chart per site of every evaluation (both decisions), p-value per batch."""
    found = []
    for position, site in enumerate(sites):
        mine = [a for a in alerts if a.get("site") == site]
        if mine:
            found.append({"site": site, "count": len(mine),
                          "drift": sum(1 for a in mine if a.get("decision") == "drift"),
                          "chart": charts.drift_timeline(mine, site=site, chart_id=f"timeline-{position}")})
    return found


def _row(alert: dict) -> dict[str, Any]:
    details = alert.get("details") if isinstance(alert.get("details"), dict) else {}
    return {
        **alert,
        "report_link": links.report_link(alert.get("report_uri"), details),
        "models": [(name, links.model_link(name)) for name in links.model_names(alert.get("site"))],
        "actions": ACTIONS_BY_STATUS.get(alert.get("status", ""), ()),
        "details_json": json.dumps(alert.get("details"), indent=2, sort_keys=True, default=str)
        if alert.get("details") else "",
    }


def _done_notice(params: Mapping[str, str]) -> str | None:
    """The message after an action's redirect, composed from checked parameters only (no free text)."""
    action, alert = params.get("done", ""), params.get("alert", "")
    if action not in DONE_WORDS or not alert.isdigit():
        return None
    notice = f"Alert {alert} {DONE_WORDS[action]}."
    if action == "approve" and params.get("event", "").isdigit():
        notice += f" Asset event {params['event']} emitted on {DRIFT_ASSET_URI}."
        queued = [d for d in params.get("queued", "").split(",") if _DAG_ID.match(d)]
        paused = [d for d in params.get("paused", "").split(",") if _DAG_ID.match(d)]
        if queued:
            notice += f" Queued: {', '.join(queued)}."
        if paused:
            notice += f" Not queued because paused: {', '.join(paused)} (unpause to retrain on the next approval)."
        if not queued and not paused:
            notice += " No DAG is scheduled on this Asset."
    return notice


async def _drift_page(
    request: Request, user: Any, site: str, status_: str, decision: str = DEFAULT_DECISION, *,
    errors: list[dict] | None = None, status_code: int = 200,
) -> HTMLResponse:
    context = _context(request, user, "drift", "Drift review")
    context["errors"] = list(errors or [])
    try:
        alerts = await workload.drift_alerts()
    except WorkloadError as exc:
        alerts = []
        context["errors"].append(_box("Could not load the drift alerts", exc))
    counts = {s: sum(1 for a in alerts if a.get("status") == s) for s in ALERT_STATUSES}
    decision_counts = {d: sum(1 for a in alerts if a.get("decision") == d) for d in ALERT_DECISIONS}
    decision_counts[ANY] = len(alerts)
    sites = sorted({str(a["site"]) for a in alerts if a.get("site")} | ({site} if site else set()))
    context.update(
        alerts=[_row(a) for a in _filter(alerts, site, status_, decision)],
        total=len(alerts),
        counts=counts,
        sites=sites,
        statuses=ALERT_STATUSES,
        site=site,
        status=status_,
        decision=decision,
        decisions=(*ALERT_DECISIONS, ANY),
        decision_labels=DECISION_LABELS,
        decision_counts=decision_counts,
        timelines=_timelines(alerts, [site] if site else sites),
        labels=ACTION_LABELS,
        notice=_done_notice(request.query_params),
        asset_uri=DRIFT_ASSET_URI,
    )
    return templates.TemplateResponse(request, "drift.html", context, status_code=status_code)


async def review(request: Request, alert_id: int, action: str, user: Any) -> dict[str, Any]:
    """Record the decision under the user's name; an approval also emits the drift Asset event, as that user."""
    name = user.get_name()
    token = access.request_token(request)
    if action == "approve":  # refuse before anything is recorded if retraining could not follow
        await asset_events.check_drift_asset(token)
    alert = await workload.review_alert(alert_id, action, name)
    event = None
    if action == "approve":
        try:
            event = await asset_events.emit_drift_approval(alert, name, token)
        except Exception as exc:
            raise asset_events.AssetEventError(
                f"alert {alert_id} is now {alert.get('status')!r}, but its Asset event failed: {exc}"
            ) from exc
    return {"alert": alert, "asset_event": event}


@app.get("/", include_in_schema=False)
async def index(request: Request) -> RedirectResponse:
    return RedirectResponse(f"{_base(request)}/federation", status_code=status.HTTP_303_SEE_OTHER)


@app.get("/drift", response_class=HTMLResponse)
async def drift_page(request: Request, user: UserDep, site: str = "", status_: str = Query("", alias="status"),
                     decision: str = DEFAULT_DECISION):
    access.require(user, access.VIEW_DRIFT)
    return await _drift_page(request, user, site, status_, _decision(decision))


@app.post("/drift/alerts/{alert_id}/{action}", response_class=HTMLResponse)
async def drift_action(request: Request, alert_id: int, action: str, user: UserDep):
    form = await request.form()
    site, status_ = str(form.get("site", "")), str(form.get("status", ""))
    decision = _decision(str(form.get("decision", DEFAULT_DECISION)))
    if action not in REVIEW_ACTIONS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown action {action!r}")
    try:
        access.check_same_origin(request)
        access.require(user, access.ACTION_PERMISSIONS[action])
        outcome = await review(request, alert_id, action, user)
    except HTTPException as exc:
        return await _drift_page(request, user, site, status_, decision, errors=[_box("Refused", exc.detail)],
                                 status_code=exc.status_code)
    except WorkloadError as exc:
        box = _box(f"Could not {action} alert {alert_id}", exc)
        return await _drift_page(request, user, site, status_, decision, errors=[box],
                                 status_code=status.HTTP_502_BAD_GATEWAY)
    except asset_events.AssetEventError as exc:
        return await _drift_page(request, user, site, status_, decision,
                                 errors=[_box("Retraining could not be triggered", exc)],
                                 status_code=status.HTTP_409_CONFLICT)
    params = {"site": site, "status": status_, "decision": decision, "done": action, "alert": alert_id}
    if event := outcome["asset_event"]:
        params.update(event=event["event_id"], queued=",".join(event["queued_dag_ids"]),
                      paused=",".join(event["paused_dag_ids"]))
    query = urlencode({k: v for k, v in params.items() if v != ""})
    return RedirectResponse(f"{_base(request)}/drift?{query}", status_code=status.HTTP_303_SEE_OTHER)


# --- costs -----------------------------------------------------------------------------------------------


def _chart_src(svg: Any) -> str | None:
    if not isinstance(svg, str) or "<svg" not in svg[:500]:
        return None
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def _daily_table(report: dict) -> dict[str, Any]:
    """by_day rows as a day x provider table (the chart's numbers, readable without the picture)."""
    providers = sorted({str(r.get("provider")) for r in report.get("by_day") or []})
    days: dict[str, dict[str, Any]] = {}
    for row in report.get("by_day") or []:
        days.setdefault(str(row.get("day")), {})[str(row.get("provider"))] = row.get("cost")
    return {"providers": providers, "days": sorted(days.items())}


async def _costs_page(request: Request, user: Any, report_values: Mapping[str, Any],
                      recommend_values: Mapping[str, Any] | None) -> HTMLResponse:
    context = _context(request, user, "costs", "Costs")
    context.update(report=None, chart=None, daily=None, recommendation=None, form_problems={},
                   query={"project": forms.DEFAULT_PROJECT, "from": "", "until": ""},
                   template={"vcpus": "8", "memory_gib": "32", "gpus": "1", "gpu_class": "T4", "regions": "",
                             "hours": ""})
    jobs: dict[str, Any] = {}
    try:
        query = forms.report_query(report_values, last_day_key="until")
        context["query"] = {"project": query.project, "from": query.start.isoformat(),
                            "until": query.last_day.isoformat()}
        jobs["report"] = workload.costs_report(query.project, query.start, query.end)
    except forms.FormError as exc:
        context["errors"].append(_box("Cost report: check the form", exc))
        context["form_problems"].update(exc.problems)
    if recommend_values is not None:
        context["template"] = {k: str(recommend_values.get(k, "")) for k in context["template"]}
        try:
            jobs["recommendation"] = workload.costs_recommend(forms.template(recommend_values).as_dict())
        except forms.FormError as exc:
            context["errors"].append(_box("Recommendation: check the form", exc))
            context["form_problems"].update(exc.problems)
    results = await asyncio.gather(*jobs.values(), return_exceptions=True)
    for key, result in zip(jobs, results, strict=True):
        if isinstance(result, WorkloadError):
            context["errors"].append(_box(f"Could not compute the {key}", result))
        elif isinstance(result, BaseException):
            raise result
        else:
            context[key] = result
    if context["report"]:
        context["chart"] = _chart_src(context["report"].get("chart_svg"))
        context["daily"] = _daily_table(context["report"])
    return templates.TemplateResponse(request, "costs.html", context)


@app.get("/costs", response_class=HTMLResponse)
async def costs_page(request: Request, user: UserDep):
    access.require(user, access.VIEW_COSTS)
    return await _costs_page(request, user, request.query_params, None)


@app.post("/costs/recommend", response_class=HTMLResponse)
async def costs_recommend_page(request: Request, user: UserDep):
    access.require(user, access.VIEW_COSTS)
    access.check_same_origin(request)
    form = await request.form()
    report_values = {"project": form.get("project"), "from": form.get("from"), "until": form.get("until")}
    return await _costs_page(request, user, report_values, form)


# --- federation ------------------------------------------------------------------------------------------


def _month(today: Any = None) -> tuple[Any, Any]:
    """This calendar month so far (UTC): its first day and tomorrow (the cost layer's end is exclusive)."""
    today = today or datetime.now(UTC).date()
    return today.replace(day=1), today + timedelta(days=1)


def _dag_run_link(request: Request, dag_id: str, run_id: str | None) -> str | None:
    if not run_id:
        return None
    return f"{_airflow(request)}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def _mlflow_run_link(run: Mapping[str, Any]) -> str | None:
    if not run.get("run_id"):
        return None
    return f"{links.mlflow_ui_url()}/#/experiments/{quote(str(run.get('experiment_id') or '0'))}/runs/{run['run_id']}"


def _version_link(name: str, version: Any) -> str:
    return f"{links.model_link(name)}/versions/{quote(str(version))}"


def _run_view(request: Request, run: Mapping[str, Any], sites: list[str], position: int) -> dict[str, Any]:
    """A training run with its links, its per-round chart (global and per site) and the same numbers as a table."""
    rounds = run.get("rounds") or {}
    per_site = rounds.get("sites") or {}
    order = sites + sorted(set(per_site) - set(sites))
    series = [
        charts.Series(site, [(p["round"], p["value"]) for p in per_site[site]], f"series-{order.index(site) % 8}")
        for site in order if per_site.get(site)
    ]
    if rounds.get("global"):
        series.append(charts.Series("global", [(p["round"], p["value"]) for p in rounds["global"]], "series-global",
                                    emphasis=True))
    steps = sorted({x for s in series for x, _ in s.points})
    table = {s.name: dict(s.points) for s in series}
    label = f"F1 of the failure class per round, training run {run.get('run_name') or run.get('run_id')}"
    return {
        **run,
        "dag_run_link": _dag_run_link(request, str(run.get("dag_id") or access.TRAINING_DAG_ID), run.get("dag_run_id")),
        "mlflow_link": _mlflow_run_link(run),
        "chart": charts.line_chart(series, chart_id=f"rounds-{position}", label=label) if series else None,
        "legend": [(s.name, s.css) for s in reversed(series)],
        "steps": steps,
        "table": table,
        "started": _when(run.get("start_time")),
    }


def _when(millis: Any) -> str:
    if not isinstance(millis, int | float):
        return ""
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _model_view(request: Request, model: Mapping[str, Any]) -> dict[str, Any]:
    versions = []
    for v in model.get("versions") or []:
        versions.append({
            **v,
            "link": _version_link(model["name"], v.get("version")),
            "dag_run_link": _dag_run_link(request, access.TRAINING_DAG_ID, v.get("dag_run_id")),
        })
    return {**model, "link": links.model_link(model["name"]), "versions": versions,
            "champion": (model.get("aliases") or {}).get(CHAMPION)}


async def _federation_page(request: Request, user: Any) -> HTMLResponse:
    context = _context(request, user, "federation", "Federation")
    start, end = _month()
    results = await asyncio.gather(
        workload.federation(FEDERATION_RUNS),
        workload.costs_report(forms.DEFAULT_PROJECT, start, end, chart=False),
        return_exceptions=True,
    )
    federation, cost = results
    for what, result in (("the federation", federation), ("this month's cost", cost)):
        if isinstance(result, WorkloadError):
            context["errors"].append(_box(f"Could not load {what}", result))
        elif isinstance(result, BaseException):
            raise result
    federation = None if isinstance(federation, BaseException) else federation
    cost = None if isinstance(cost, BaseException) else cost
    context.update(federation=None, cost=cost, airflow=_airflow(request),
                   month={"from": start.isoformat(), "until": (end - timedelta(days=1)).isoformat()})
    if federation:
        sites = [s["site"] for s in federation["sites"]]
        models = federation.get("models") or {}
        context["federation"] = {
            **federation,
            "runs": [_run_view(request, r, sites, i) for i, r in enumerate(federation.get("runs") or [])],
            "global_model": _model_view(request, models["global"]) if models.get("global") else None,
            "site_models": [_model_view(request, m) for m in (models.get("sites") or {}).values()],
            "site_colours": {site: f"series-{i % 8}" for i, site in enumerate(sites)},
        }
        for what, error in (federation.get("errors") or {}).items():
            context["errors"].append(_box(f"Part of the federation could not be read ({what})", error))
    return templates.TemplateResponse(request, "federation.html", context)


@app.get("/federation", response_class=HTMLResponse)
async def federation_page(request: Request, user: UserDep):
    access.require(user, access.VIEW_FEDERATION)
    return await _federation_page(request, user)


# --- JSON ------------------------------------------------------------------------------------------------


class ReviewBody(BaseModel):
    action: str


def _workload_failure(exc: WorkloadError) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "command": exc.command}, status_code=status.HTTP_502_BAD_GATEWAY)


def _form_failure(exc: forms.FormError) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "fields": exc.problems}, status_code=status.HTTP_400_BAD_REQUEST)


@api.get("/me")
async def me(user: UserDep) -> dict[str, Any]:
    return {"user": user.get_name(), "permissions": access.permissions(user)}


@api.get("/federation")
async def api_federation(user: UserDep) -> Any:
    access.require(user, access.VIEW_FEDERATION)
    start, end = _month()
    federation, cost = await asyncio.gather(
        workload.federation(FEDERATION_RUNS), workload.costs_report(forms.DEFAULT_PROJECT, start, end, chart=False),
        return_exceptions=True,
    )
    for result in (federation, cost):  # the federation's failure first: it is what this answer is about
        if isinstance(result, WorkloadError):
            return _workload_failure(result)
        if isinstance(result, BaseException):
            raise result
    return {**federation, "cost_this_month": cost}


@api.get("/drift/alerts")
async def api_alerts(user: UserDep, site: str = "", status_: str = Query("", alias="status"), decision: str = ANY
                     ) -> Any:
    access.require(user, access.VIEW_DRIFT)
    try:
        return _filter(await workload.drift_alerts(), site, status_, _decision(decision))
    except WorkloadError as exc:
        return _workload_failure(exc)


@api.post("/drift/alerts/{alert_id}/review")
async def api_review(request: Request, alert_id: int, body: ReviewBody, user: UserDep) -> Any:
    if body.action not in REVIEW_ACTIONS:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"action must be one of {', '.join(REVIEW_ACTIONS)}")
    access.check_same_origin(request)
    access.require(user, access.ACTION_PERMISSIONS[body.action])
    try:
        return await review(request, alert_id, body.action, user)
    except WorkloadError as exc:
        return _workload_failure(exc)
    except asset_events.AssetEventError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)


@api.get("/costs/report")
async def api_costs_report(request: Request, user: UserDep) -> Any:
    access.require(user, access.VIEW_COSTS)
    try:
        query = forms.report_query(request.query_params)
        return await workload.costs_report(query.project, query.start, query.end)
    except forms.FormError as exc:
        return _form_failure(exc)
    except WorkloadError as exc:
        return _workload_failure(exc)


@api.get("/costs/recommend")
async def api_costs_recommend(request: Request, user: UserDep) -> Any:
    access.require(user, access.VIEW_COSTS)
    try:
        return await workload.costs_recommend(forms.template(request.query_params).as_dict())
    except forms.FormError as exc:
        return _form_failure(exc)
    except WorkloadError as exc:
        return _workload_failure(exc)


app.include_router(api)

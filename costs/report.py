"""Cost per federated project: totals by provider, service and day, and every project's total, for a window.

The project is the value of the configured tag key (default ``mledge-project``), resolved at ingestion into
``x_project``; untagged cost appears as project ``null``. The amount is ``EffectiveCost`` by default (amortised,
after discounts and credits: what FinOps allocates to a team), or BilledCost/ListCost/ContractedCost. Sums are
done by the database on exact columns (see ``costs.dbtypes``) and printed as decimal strings.

The window is [from, to): ``to`` is exclusive, like FOCUS's ChargePeriodEnd. Rows in several currencies are
never added together: name one with ``currency``.

``sharing`` splits the project's cost in the window among its sites (see ``costs.sharing``): every run with
shares recorded in the window costs its training rows plus a part of the project's cloud bill in the window (all
of it, divided among the runs in proportion to their compute cost, or equally when that is zero), and that total
is split by the run's stored shares. Cloud cost with no shared run in the window is reported as unallocated.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import Date, cast, func, select

from costs.focus import day_start
from costs.store import CostStore, cost_rows

METRICS = ("EffectiveCost", "BilledCost", "ListCost", "ContractedCost")


def _amount(value: Decimal | None) -> str:
    return format((value or Decimal(0)).normalize(), "f")


def _day_expression(store: CostStore):
    column = cost_rows.c.ChargePeriodStart
    return func.date(column) if store.dialect == "sqlite" else cast(column, Date)


def cost_report(store: CostStore, project: str, start: date, end: date, *, metric: str = "EffectiveCost",
                currency: str | None = None) -> dict:
    """The JSON of ``mledge costs report``: totals for ``project`` in [start, end), plus every project's total."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if end <= start:
        raise ValueError(f"empty window: from {start} to {end} (the end is exclusive)")
    amount = cost_rows.c[metric]
    in_window = [cost_rows.c.ChargePeriodStart >= day_start(start), cost_rows.c.ChargePeriodStart < day_start(end)]
    mine = [*in_window, cost_rows.c.x_project == project]
    with store.engine.connect() as conn:
        currencies = sorted(conn.execute(select(cost_rows.c.BillingCurrency).where(*mine).distinct()).scalars())
        if currency is None:
            if len(currencies) > 1:
                raise ValueError(f"project {project} has costs in {', '.join(currencies)} between {start} and {end}; "
                                 "choose one with --currency (amounts in different currencies are never added)")
            currency = currencies[0] if currencies else None
        if currency:
            mine.append(cost_rows.c.BillingCurrency == currency)
            in_window.append(cost_rows.c.BillingCurrency == currency)
        day = _day_expression(store).label("day")
        by_provider = conn.execute(select(cost_rows.c.ProviderName, func.sum(amount)).where(*mine)
                                   .group_by(cost_rows.c.ProviderName).order_by(cost_rows.c.ProviderName)).all()
        by_service = conn.execute(
            select(cost_rows.c.ProviderName, cost_rows.c.ServiceName, func.sum(amount).label("cost")).where(*mine)
            .group_by(cost_rows.c.ProviderName, cost_rows.c.ServiceName)
            .order_by(func.sum(amount).desc(), cost_rows.c.ProviderName, cost_rows.c.ServiceName)).all()
        by_day = conn.execute(select(day, cost_rows.c.ProviderName, func.sum(amount)).where(*mine)
                              .group_by(day, cost_rows.c.ProviderName).order_by(day, cost_rows.c.ProviderName)).all()
        by_source = conn.execute(select(cost_rows.c.x_source, func.sum(amount)).where(*mine)
                                 .group_by(cost_rows.c.x_source).order_by(cost_rows.c.x_source)).all()
        projects = conn.execute(
            select(cost_rows.c.x_project, func.sum(amount).label("cost")).where(*in_window)
            .group_by(cost_rows.c.x_project).order_by(func.sum(amount).desc())).all()
    total = sum((cost for _, cost in by_provider), Decimal(0))
    return {
        "project": project,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "metric": metric,
        "currency": currency,
        "total": _amount(total),
        "by_provider": {provider: _amount(cost) for provider, cost in by_provider},
        "by_service": [{"provider": p, "service": s, "cost": _amount(c)} for p, s, c in by_service],
        "by_day": [{"day": str(d), "provider": p, "cost": _amount(c)} for d, p, c in by_day],
        "by_source": {source: _amount(cost) for source, cost in by_source},
        "projects": [{"project": p, "cost": _amount(c)} for p, c in projects],
        "sharing": sharing(store, project, start, end, metric=metric, currency=currency),
    }


def _run_of(resource_id: str) -> tuple[str, str] | None:
    """(Flower run id, site) of a training row's ResourceId ``mledge:flower-run/<run>/site/<site>``."""
    from costs.training import RESOURCE_PREFIX

    if not resource_id or not resource_id.startswith(RESOURCE_PREFIX):
        return None
    run, _, site = resource_id[len(RESOURCE_PREFIX):].partition("/site/")
    return (run, site) if run and site else None


def sharing(store: CostStore, project: str, start: date, end: date, *, metric: str = "EffectiveCost",
            currency: str | None = None) -> dict:
    """The project's cost in [start, end) split among its sites, run by run (the Costs page's share column)."""
    from costs.sharing import split, stored_shares
    from costs.training import TRAINING_SOURCE

    amount = cost_rows.c[metric]
    window = [cost_rows.c.x_project == project, cost_rows.c.ChargePeriodStart >= day_start(start),
              cost_rows.c.ChargePeriodStart < day_start(end)]
    if currency:
        window.append(cost_rows.c.BillingCurrency == currency)
    with store.engine.connect() as conn:
        training = conn.execute(select(cost_rows.c.ResourceId, func.sum(amount))
                                .where(*window, cost_rows.c.x_source == TRAINING_SOURCE)
                                .group_by(cost_rows.c.ResourceId)).all()
        cloud = conn.execute(select(func.sum(amount)).where(*window, cost_rows.c.x_source != TRAINING_SOURCE)
                             ).scalar_one() or Decimal(0)
    compute: dict[str, dict[str, Decimal]] = {}
    for resource, cost in training:
        owner = _run_of(resource)
        if owner is not None:
            compute.setdefault(owner[0], {})[owner[1]] = cost or Decimal(0)
    shared = stored_shares(store, project, start, end)
    run_compute = {run: sum(compute.get(run, {}).values(), Decimal(0)) for run in shared}
    weight_total = sum(run_compute.values(), Decimal(0))
    cloud_parts = (split(cloud, {r: c / weight_total for r, c in run_compute.items()}) if weight_total else
                   split(cloud, {r: Decimal(1) / len(shared) for r in shared}) if shared else {})
    runs, by_site = [], {}
    for run, entry in shared.items():
        total = run_compute[run] + cloud_parts.get(run, Decimal(0))
        amounts = split(total, entry["shares"])
        sites = []
        for site in sorted(entry["shares"]):
            own = compute.get(run, {}).get(site, Decimal(0))
            sites.append({"site": site, "share": _amount(entry["shares"][site]), "amount": _amount(amounts[site]),
                          "compute_cost": _amount(own)})
            slot = by_site.setdefault(site, {"amount": Decimal(0), "compute_cost": Decimal(0), "runs": 0})
            slot["amount"] += amounts[site]
            slot["compute_cost"] += own
            slot["runs"] += 1
        runs.append({"flower_run_id": run, "day": entry["day"].isoformat(), "rule": entry["rule"],
                     "compute_cost": _amount(run_compute[run]), "cloud_cost": _amount(cloud_parts.get(run)),
                     "total": _amount(total), "sites": sites})
    shared_total = sum((s["amount"] for s in by_site.values()), Decimal(0))
    unshared = {run: sum(c.values(), Decimal(0)) for run, c in compute.items() if run not in shared}
    rules = sorted({r["rule"] for r in runs})
    return {
        "rule": rules[0] if len(rules) == 1 else ("mixed" if rules else None),
        "shared_total": _amount(shared_total),
        "cloud_cost": _amount(cloud),
        "unallocated": _amount((Decimal(0) if shared else cloud) + sum(unshared.values(), Decimal(0))),
        "unshared_runs": sorted(unshared),
        "by_site": [{"site": site, "share": _amount((v["amount"] / shared_total).quantize(Decimal("1E-10"))
                                                    if shared_total else Decimal(0)),
                     "amount": _amount(v["amount"]), "compute_cost": _amount(v["compute_cost"]), "runs": v["runs"]}
                    for site, v in sorted(by_site.items())],
        "runs": runs,
    }


def projects_by_provider(store: CostStore, start: date, end: date, *, metric: str = "EffectiveCost",
                         currency: str = "USD") -> dict[str | None, dict[str, str]]:
    """Every project's cost per provider in [start, end) (``None``: untagged), one currency."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    amount = cost_rows.c[metric]
    query = (select(cost_rows.c.x_project, cost_rows.c.ProviderName, func.sum(amount))
             .where(cost_rows.c.ChargePeriodStart >= day_start(start), cost_rows.c.ChargePeriodStart < day_start(end),
                    cost_rows.c.BillingCurrency == currency)
             .group_by(cost_rows.c.x_project, cost_rows.c.ProviderName)
             .order_by(cost_rows.c.x_project, cost_rows.c.ProviderName))
    out: dict[str | None, dict[str, str]] = {}
    with store.engine.connect() as conn:
        for project, provider, cost in conn.execute(query):
            out.setdefault(project, {})[provider] = _amount(cost)
    return out


def chart_svg(report: dict) -> str:
    """Daily cost per provider as an SVG line chart (matplotlib, Agg; deterministic ids, no timestamp)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start, end = date.fromisoformat(report["from"]), date.fromisoformat(report["to"])
    days = [start + timedelta(days=i) for i in range((end - start).days)]
    series: dict[str, dict[str, float]] = {}
    for entry in report["by_day"]:
        series.setdefault(entry["provider"], {})[entry["day"]] = float(entry["cost"])  # drawing only
    with matplotlib.rc_context({"svg.hashsalt": "mledge-costs", "svg.fonttype": "none"}):
        figure, axes = plt.subplots(figsize=(8, 3.2), dpi=100)
        try:
            for provider, values in sorted(series.items()):
                axes.plot(days, [values.get(d.isoformat(), 0.0) for d in days], marker="o", markersize=3,
                          label=provider)
            axes.set_title(f"{report['project']}: daily {report.get('metric', 'cost')} per provider "
                           f"({report.get('currency') or 'no data'})")
            axes.set_ylabel(report.get("currency") or "")
            axes.grid(alpha=0.3)
            if series:
                axes.legend(loc="upper left", fontsize="small")
            figure.autofmt_xdate()
            figure.tight_layout()
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg", metadata={"Date": None})
        finally:
            plt.close(figure)
    return buffer.getvalue()

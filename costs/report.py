"""Cost per federated project: totals by provider, service and day, and every project's total, for a window.

The project is the value of the configured tag key (default ``mledge-project``), resolved at ingestion into
``x_project``; untagged cost appears as project ``null``. The amount is ``EffectiveCost`` by default (amortised,
after discounts and credits: what FinOps allocates to a team), or BilledCost/ListCost/ContractedCost. Sums are
done by the database on exact columns (see ``costs.dbtypes``) and printed as decimal strings.

The window is [from, to): ``to`` is exclusive, like FOCUS's ChargePeriodEnd. Rows in several currencies are
never added together: name one with ``currency``.
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

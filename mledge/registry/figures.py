"""A training run's figures for MLflow: each site's F1 of the failure class per round, the aggregation weight each
site's update got per round, and the final global model's confusion matrix over all sites' held-out rows.

Drawn at the platform from what the run already holds (its metric history and the summed confusion counts): no
row is needed. matplotlib's Agg backend: no screen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fl.protocol import Counts

PER_SITE_F1 = "figures/per_site_f1.png"
AGGREGATION_WEIGHTS = "figures/aggregation_weights.png"
CONFUSION_MATRIX = "figures/confusion_matrix.png"
FEDERATED = "federated"


def per_site_series(history: Iterable[Mapping], metric: str) -> dict[str, dict[int, float]]:
    """``{site: {step: value}}`` of ``<site>/<metric>`` in a metric history (records ``{"step", "metrics"}``);
    the federated value (``<metric>`` alone) under ``federated``. A later record of the same step wins."""
    series: dict[str, dict[int, float]] = {}
    for record in history:
        for key, value in record["metrics"].items():
            site, _, name = key.rpartition("/")
            if name != metric or "/" in site:
                continue
            series.setdefault(site or FEDERATED, {})[int(record["step"])] = float(value)
    return series


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(6.4, 4.0), layout="constrained")


def line_figure(series: Mapping[str, Mapping[int, float]], title: str, xlabel: str, ylabel: str):
    """One line per site (the federated one bold and black), steps on x."""
    figure = _figure()
    axes = figure.subplots()
    for name in sorted(series, key=lambda s: (s == FEDERATED, s)):
        steps = sorted(series[name])
        style = {"color": "black", "linewidth": 2.5} if name == FEDERATED else {"marker": "o"}
        axes.plot(steps, [series[name][s] for s in steps], label=name, **style)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def confusion_figure(counts: Counts, title: str = "Final global model, all sites' held-out rows"):
    """The 2x2 confusion matrix (rows: truth, columns: prediction) with the counts written in the cells."""
    figure = _figure()
    axes = figure.subplots()
    cells = [[counts.tn, counts.fp], [counts.fn, counts.tp]]
    axes.imshow(cells, cmap="Blues")
    for row in range(2):
        for col in range(2):
            axes.text(col, row, f"{int(cells[row][col]):,}", ha="center", va="center", fontsize=14,
                      color="white" if cells[row][col] > max(map(max, cells)) / 2 else "black")
    axes.set_xticks([0, 1], ["no failure", "failure"])
    axes.set_yticks([0, 1], ["no failure", "failure"])
    axes.set(title=title, xlabel="predicted", ylabel="true")
    return figure


def run_figures(history: Iterable[Mapping], final_counts: Counts | None) -> dict[str, object]:
    """The run's figures by artifact path; a figure with nothing to draw is left out."""
    history = list(history)
    figures: dict[str, object] = {}
    if f1 := per_site_series(history, "eval_f1"):
        # step r: the model the sites received in round r+1 (step 0 is the initial model)
        figures[PER_SITE_F1] = line_figure(f1, "F1 of the failure class per round", "round", "F1 (held-out rows)")
    if weights := per_site_series(history, "aggregation_weight"):
        figures[AGGREGATION_WEIGHTS] = line_figure(weights, "Aggregation weight per round", "round", "weight")
    if final_counts is not None and final_counts.n:
        figures[CONFUSION_MATRIX] = confusion_figure(final_counts)
    return figures

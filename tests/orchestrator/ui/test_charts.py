"""The inline SVG charts: where a value lands, what each mark says, and that names cannot inject markup."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from operators.ui import charts

SVG = "{http://www.w3.org/2000/svg}"


def parse(markup) -> ET.Element:
    return ET.fromstring(str(markup))  # well-formed XML, or this raises


def points(svg: ET.Element, series: str) -> list[tuple[float, float, str]]:
    (group,) = [g for g in svg.iter(f"{SVG}g") if g.get("data-series") == series]
    return [(float(c.get("cx")), float(c.get("cy")), c.find(f"{SVG}title").text) for c in group.iter(f"{SVG}circle")]


def test_line_chart_places_rounds_and_f1_on_the_plot_area():
    svg = parse(charts.line_chart(
        [charts.Series("plant_a", [(1, 0.0), (2, 0.5), (3, 1.0)], "series-0"),
         charts.Series("global", [(1, 0.25), (3, 0.75)], "series-global", emphasis=True)],
        chart_id="c", label="F1 per round",
    ))
    left, right = charts.MARGIN["left"], charts.WIDTH - charts.MARGIN["right"]
    top, bottom = charts.MARGIN["top"], charts.HEIGHT - charts.MARGIN["bottom"]
    assert points(svg, "plant_a") == [
        (left, bottom, "plant_a, round 1: 0.000"),
        ((left + right) / 2, (top + bottom) / 2, "plant_a, round 2: 0.500"),
        (right, top, "plant_a, round 3: 1.000"),
    ]
    assert [g.get("data-series") for g in svg.iter(f"{SVG}g")] == ["plant_a", "global"]  # the emphasised on top
    assert "emphasis" in [g for g in svg.iter(f"{SVG}g")][1].get("class")
    assert svg.find(f"{SVG}title").text == "F1 per round"
    assert sorted(t.text for t in svg.iter(f"{SVG}text") if t.get("class") == "tick" and t.text.isdigit()) == [
        "1", "2", "3"]


def test_values_outside_the_range_stay_on_the_edge():
    svg = parse(charts.line_chart([charts.Series("s", [(1, -0.2), (2, 1.3)], "series-1")], chart_id="c", label="x"))
    ys = [y for _, y, _ in points(svg, "s")]
    assert ys == [charts.HEIGHT - charts.MARGIN["bottom"], charts.MARGIN["top"]]


def test_names_are_escaped_not_markup():
    markup = str(charts.line_chart([charts.Series('<script>alert("x")</script>', [(1, 0.5)], "series-0")],
                                   chart_id='"><svg onload=x>', label="<b>"))
    assert "<script>" not in markup and "<b>" not in markup and "onload=x>" not in markup
    parse(markup)


def test_drift_timeline_marks_each_evaluation_by_kind_and_decision():
    alerts = [
        {"id": 1, "site": "plant_b", "batch": "batch-000005", "kind": "data", "p_value": 3.5e-71, "decision": "drift",
         "status": "new"},
        {"id": 2, "site": "plant_b", "batch": "batch-000006", "kind": "concept", "p_value": 0.0004,
         "decision": "drift", "status": "retraining"},
        {"id": 3, "site": "plant_b", "batch": "batch-000004", "kind": "data", "p_value": 0.81, "decision": "no_drift",
         "status": "resolved"},
        {"id": 4, "site": "plant_b", "batch": "batch-000007", "kind": "data", "p_value": None, "decision": "no_drift",
         "status": "resolved"},  # nothing to place: no mark
    ]
    svg = parse(charts.drift_timeline(alerts, site="plant_b", chart_id="t"))
    marks = {m.get("data-alert-id"): m for m in svg.iter() if (m.get("class") or "").startswith("mark ")}
    assert set(marks) == {"1", "2", "3"}
    assert marks["2"].tag == f"{SVG}rect" and marks["1"].tag == f"{SVG}circle"
    assert "decision-drift" in marks["1"].get("class") and "decision-no_drift" in marks["3"].get("class")
    # p = 3.5e-71 is beyond the scale: drawn at the top edge, its value in its title.
    assert float(marks["1"].get("cy")) == charts.MARGIN["top"]
    assert "p = 3.5e-71" in marks["1"].find(f"{SVG}title").text
    # Batches in order along x: 4, 5, 6.
    xs = [float(marks[i].get("cx") or float(marks[i].get("x")) + 4) for i in ("3", "1", "2")]
    assert xs == sorted(xs) and len(set(xs)) == 3
    assert re.search(r"3 per batch, 2 confirmed drift", svg.find(f"{SVG}title").text)


def test_neg_log10():
    assert charts.neg_log10(0.01) == 2
    assert charts.neg_log10(0.0) == charts.P_FLOOR_EXPONENT
    assert charts.neg_log10(None) is None and charts.neg_log10(float("nan")) is None

"""``mledge costs ...`` through mledge's real argument parser, as Airflow tasks and people call it."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from mledge.cli import build_parser
from mledge.ops.settings import Settings


@pytest.fixture
def run(tmp_path):
    parser = build_parser()
    settings = Settings(home=tmp_path / "home")

    def invoke(*argv: str):
        args = parser.parse_args(["costs", *argv])
        result = args.func(args, settings)
        json.dumps(result)  # the contract: JSON-able
        return result

    return invoke


def test_sources_lists_the_configuration(run):
    result = run("sources", "--check")
    names = [s["name"] for s in result["sources"]]
    assert names == ["aws-focus-sample", "azure-focus-sample", "gcp-focus-sample", "aws-cost-explorer",
                     "gcp-billing-export", "azure-cost-management"]
    by_name = {s["name"]: s for s in result["sources"]}
    assert by_name["aws-focus-sample"]["unavailable"] is None
    assert by_name["aws-cost-explorer"]["connection"] == "aws_default"
    assert "no AWS credentials" in by_name["aws-cost-explorer"]["unavailable"]
    assert result["project_tag_key"] == "mledge-project" and result["trailing_days"] == 7


@pytest.mark.parametrize("source", ["aws-cost-explorer", "gcp-billing-export", "azure-cost-management"])
def test_a_source_without_credentials_is_skipped(run, source):
    result = run("ingest", "--source", source)
    assert set(result) == {"source", "skipped"} and result["source"] == source and result["skipped"]


def test_ingest_trailing_days_of_a_file_source_ends_at_its_newest_day(run):
    result = run("ingest", "--source", "aws-focus-sample", "--trailing-days", "3")
    assert (result["from"], result["to"]) == ("2026-11-18", "2026-11-21")
    assert [d["day"] for d in result["days"]] == ["2026-11-18", "2026-11-19", "2026-11-20"]
    assert result["rows"] == sum(d["rows"] for d in result["days"]) > 0
    again = run("ingest", "--source", "aws-focus-sample", "--from", "2026-11-18", "--to", "2026-11-21")
    assert again["rows"] == result["rows"]


def test_ingest_window_arguments_are_checked(run):
    with pytest.raises(ValueError, match="go together"):
        run("ingest", "--source", "aws-focus-sample", "--from", "2026-11-18")
    with pytest.raises(SystemExit):
        run("ingest", "--source", "aws-focus-sample", "--from", "18/11/2026", "--to", "2026-11-21")
    with pytest.raises(ValueError, match="no source named 'nope'"):
        run("ingest", "--source", "nope")


def test_report_and_chart(run):
    run("ingest", "--source", "gcp-focus-sample", "--from", "2026-11-14", "--to", "2026-11-21")
    report = run("report", "--project", "axis_failures", "--from", "2026-11-14", "--to", "2026-11-21", "--json")
    assert list(report)[:9] == ["project", "from", "to", "metric", "currency", "total", "by_provider", "by_service",
                                "by_day"]
    assert list(report["by_provider"]) == ["Google Cloud"] and Decimal(report["total"]) > 0
    assert {"provider", "service", "cost"} == set(report["by_service"][0])
    assert {"day", "provider", "cost"} == set(report["by_day"][0])
    assert {"project", "cost"} == set(report["projects"][0])
    assert "chart_svg" not in report
    charted = run("report", "--from", "2026-11-14", "--to", "2026-11-21", "--chart-svg")
    assert charted["chart_svg"].lstrip().startswith("<?xml") and charted["total"] == report["total"]


def test_recommend_shape(run):
    result = run("recommend", "--vcpus", "8", "--memory-gib", "32", "--gpus", "1", "--gpu-class", "T4",
                 "--regions", "us-east-1,eastus", "--hours", "730", "--json")
    assert set(result) == {"template", "offers", "message"}
    first = result["offers"][0]
    assert list(first) == ["rank", "provider", "region", "instance_type", "vcpu", "memory_gib", "gpu_count",
                           "gpu_model", "usd_per_hour", "total_usd", "overshoot", "as_of", "source"]
    assert first["total_usd"] == "548.96"  # 0.752 USD/h x 730 h
    assert result["template"]["regions"] == ["us-east-1", "eastus"]


def test_catalog_commands(run):
    assert run("catalog", "seed")["seeded"] == 97
    skipped = run("catalog", "refresh", "--provider", "aws")
    assert skipped["provider"] == "aws" and "no AWS credentials" in skipped["skipped"]


def test_record_training(run):
    result = run("record-training", "--flower-run-id", "17", "--seconds-json", '{"plant_a": 1800}',
                 "--at", "2026-11-20T08:00:00")
    assert result["day"] == "2026-11-20" and result["total"] == "0.329"
    report = run("report", "--from", "2026-11-20", "--to", "2026-11-21")
    assert report["by_source"] == {"mledge-training": "0.329"}


def test_demo_summary(run):
    summary = run("demo-summary")
    assert summary["window"]["from"] == "2026-11-14" and summary["window"]["to"] == "2026-11-21"
    assert [i["source"] for i in summary["ingested"]] == ["aws-focus-sample", "azure-focus-sample",
                                                           "gcp-focus-sample"]
    assert all(i["rows"] > 0 for i in summary["ingested"])
    assert set(summary["by_provider"]) == {"AWS", "Google Cloud", "Microsoft"}
    assert Decimal(summary["total"]) == sum(Decimal(v) for v in summary["by_provider"].values())
    per_project = {p["project"]: p["by_provider"] for p in summary["projects_by_provider"]}
    assert set(per_project) == {"axis_failures", "vision_qc", None}
    assert per_project["axis_failures"] == summary["by_provider"]
    assert {p["project"]: Decimal(p["cost"]) for p in summary["projects"]} == {
        project: sum(Decimal(c) for c in costs.values()) for project, costs in per_project.items()}
    recommendation = summary["recommendation"]
    assert recommendation["site"] == "plant_a" and recommendation["declared"]["instance_type"] == "g4dn.xlarge"
    assert recommendation["template"]["gpu_class"] == "T4" and recommendation["offers"]
    assert run("demo-summary")["total"] == summary["total"]  # idempotent

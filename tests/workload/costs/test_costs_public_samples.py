"""Public FOCUS files no one on the project wrote (costs/samples/public/README.md): the FinOps Foundation's FOCUS 1.0
sample (NULL literals, three providers) and FOCUS 1.2 samples of AWS, Azure and GCP, ingested whole on SQLite and
PostgreSQL and checked against an independent pandas reading of the same files."""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pandas as pd
import pytest
from conftest import SAMPLES
from sqlalchemy import func, select

from costs.focus import FOCUS_COLUMNS, TagRule
from costs.ingest import ingest
from costs.sources.focus_files import FocusFileSource
from costs.store import cost_rows

PUBLIC = SAMPLES / "public"
FILES = {
    "focus-1.0": (PUBLIC / "focus-1.0" / "focus_sample.csv.gz", "1.0"),
    "aws-1.2": (PUBLIC / "focus-1.2" / "focus_sample_costandusage_aws_subset.csv", "1.2"),
    "azure-1.2": (PUBLIC / "focus-1.2" / "focus_sample_costandusage_azure_subset.csv", "1.2"),
    "gcp-1.2": (PUBLIC / "focus-1.2" / "focus_sample_costandusage_gcp_subset.csv", "1.2"),
}
TEN = Decimal("1E-10")
# The 1.2 samples name the owner "Owner" (AWS, Azure) and "owner" (GCP): one setting covers all three.
OWNER = TagRule("Owner", {"Google Cloud": "owner"}, case_insensitive=True)


def pandas_frame(path: Path) -> pd.DataFrame:
    """The file as pandas reads it: every field text, the unquoted word NULL and empty fields missing."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=["NULL", ""])


def exact(series: pd.Series) -> Decimal:
    """Sum of a text column as exact decimals, each rounded to the store's 10 places first."""
    return sum((Decimal(v).quantize(TEN, ROUND_HALF_UP) for v in series.dropna()), Decimal(0))


def window(frame: pd.DataFrame) -> tuple[date, date]:
    days = pd.to_datetime(frame["ChargePeriodStart"].str.replace("Z", "", regex=False)).dt.date
    return min(days), max(days) + timedelta(days=1)


@pytest.fixture(params=sorted(FILES))
def sample(request):
    path, version = FILES[request.param]
    return request.param, path, version


def test_sample_ingests_with_pandas_totals(any_store, sample):
    name, path, version = sample
    frame = pandas_frame(path)
    source = FocusFileSource(name, [str(path)])
    result = ingest(source, any_store, *window(frame), tag_rule=OWNER)
    assert result.rows == any_store.count(name) == len(frame)  # no row dropped or merged
    totals = any_store.totals(name)
    for column in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost"):
        assert totals[column] == exact(frame[column]), column
    # per provider and service, as a report groups them
    with any_store.engine.connect() as conn:
        stored = {(p, s): c for p, s, c in conn.execute(
            select(cost_rows.c.ProviderName, cost_rows.c.ServiceName, func.sum(cost_rows.c.EffectiveCost))
            .where(cost_rows.c.x_source == name).group_by(cost_rows.c.ProviderName, cost_rows.c.ServiceName))}
    expected = {key: exact(group["EffectiveCost"]) for key, group in frame.groupby(["ProviderName", "ServiceName"])}
    assert stored == expected
    # a second run changes nothing and writes nothing
    again = ingest(source, any_store, *window(frame), tag_rule=OWNER)
    assert {d.get("action") for d in again.days if "action" in d} == {"unchanged"}
    assert any_store.totals(name) == totals and any_store.count(name) == len(frame)


def test_every_column_of_the_version_is_kept(any_store, sample):
    name, path, version = sample
    frame = pandas_frame(path)
    ingest(FocusFileSource(name, [str(path)]), any_store, *window(frame))
    with any_store.engine.connect() as conn:
        for column in FOCUS_COLUMNS[version]:
            stored = conn.execute(select(func.count(cost_rows.c[column])).where(cost_rows.c.x_source == name)
                                  ).scalar_one()
            assert stored == frame[column].notna().sum(), column
        versions = set(conn.execute(select(cost_rows.c.x_focus_version).where(cost_rows.c.x_source == name)
                                    ).scalars())
        quantity = conn.execute(select(func.sum(cost_rows.c.PricingQuantity))
                                .where(cost_rows.c.x_source == name)).scalar_one()
    assert versions == {version}
    if any_store.dialect == "postgresql":  # exact NUMERIC sum of quantities (SQLite keeps them as text)
        places = Decimal("1E-18")
        assert quantity == sum((Decimal(v).quantize(places) for v in frame["PricingQuantity"].dropna()), Decimal(0))


def test_commitment_and_pricing_currency_columns_are_queryable(sqlite_store):
    path, _ = FILES["aws-1.2"]
    frame = pandas_frame(path)
    ingest(FocusFileSource("aws", [str(path)]), sqlite_store, *window(frame))
    with sqlite_store.engine.connect() as conn:
        committed = conn.execute(select(func.sum(cost_rows.c.EffectiveCost)).where(
            cost_rows.c.CommitmentDiscountStatus == "Used")).scalar_one()
        eur = conn.execute(select(cost_rows.c.PricingCurrency, cost_rows.c.PricingCurrencyEffectiveCost).where(
            cost_rows.c.PricingCurrency == "EUR")).all()
        details = conn.execute(select(cost_rows.c.SkuPriceDetails).where(cost_rows.c.SkuPriceDetails.isnot(None))
                               ).scalars().first()
    assert committed == exact(frame.loc[frame["CommitmentDiscountStatus"] == "Used", "EffectiveCost"])
    assert eur == [("EUR", Decimal("0.492919"))]
    assert json.loads(details)  # SkuPriceDetails kept as the provider's JSON text


def test_project_tag_key_per_provider_and_case(sqlite_store):
    """AWS and Azure write Owner, GCP owner: one rule attributes all three; the default key finds none."""
    for name in ("aws-1.2", "azure-1.2", "gcp-1.2"):
        path, _ = FILES[name]
        frame = pandas_frame(path)
        ingest(FocusFileSource(name, [str(path)]), sqlite_store, *window(frame), tag_rule=OWNER)
        expected = frame["Tags"].map(lambda t: {k.lower(): v for k, v in json.loads(t).items()}["owner"])
        with sqlite_store.engine.connect() as conn:
            stored = dict(conn.execute(select(cost_rows.c.x_project, func.count()).where(
                cost_rows.c.x_source == name).group_by(cost_rows.c.x_project)).all())
        assert stored == expected.value_counts().to_dict(), name
    strict = TagRule("owner")  # case-sensitive: the AWS rows stay unattributed
    path, _ = FILES["aws-1.2"]
    ingest(FocusFileSource("aws-strict", [str(path)]), sqlite_store, *window(pandas_frame(path)), tag_rule=strict)
    with sqlite_store.engine.connect() as conn:
        assert set(conn.execute(select(cost_rows.c.x_project).where(cost_rows.c.x_source == "aws-strict")
                                ).scalars()) == {None}


def test_null_literal_bom_and_column_order(sqlite_store, tmp_path):
    """The same rows with a UTF-8 BOM, columns in another order and a quoted "NULL": the same totals, and the
    quoted word stays text while the unquoted one is empty."""
    path, _ = FILES["focus-1.0"]
    frame = pandas_frame(path).head(50).copy()
    frame.loc[0, "ResourceName"] = None
    columns = ["ResourceName"] + [c for c in reversed(frame.columns) if c != "ResourceName"]
    text = frame[columns].to_csv(index=False, na_rep="NULL")
    header, first, rest = text.split("\n", 2)
    assert first.startswith("NULL,")
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_bytes(b"\xef\xbb\xbf" + "\n".join([header, '"NULL"' + first[4:], rest]).encode())
    ingest(FocusFileSource("shuffled", [str(shuffled)]), sqlite_store, *window(frame))
    assert sqlite_store.totals("shuffled")["BilledCost"] == exact(frame["BilledCost"])
    with sqlite_store.engine.connect() as conn:
        classes = set(conn.execute(select(cost_rows.c.ChargeClass).where(cost_rows.c.x_source == "shuffled")).scalars())
        names = conn.execute(select(cost_rows.c.ResourceName).where(cost_rows.c.ResourceName == "NULL")).all()
    assert classes == {None}  # the unquoted NULL of ChargeClass is empty, not the word
    assert len(names) == 1  # the quoted one is the word

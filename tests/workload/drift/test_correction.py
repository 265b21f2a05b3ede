"""False-alarm control: Holm within a site, Bonferroni across sites."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest

from drift.correction import correct


def test_holm_within_a_site():
    result = correct({"a": 0.001, "b": 0.02, "c": 0.04}, alpha=0.05, n_sites=1)
    tests = result["tests"]
    # Holm: sorted p times (m, m-1, ...), made monotone: 0.003, 0.04, 0.04.
    assert [tests[k]["adjusted_p_value"] for k in "abc"] == pytest.approx([0.003, 0.04, 0.04])
    assert all(tests[k]["drift"] for k in "abc") and result["drift"]
    assert result["method"] == "holm"


def test_sites_share_alpha():
    result = correct({"a": 0.001, "b": 0.02, "c": 0.04}, alpha=0.05, n_sites=3)
    tests = result["tests"]
    assert [tests[k]["adjusted_p_value"] for k in "abc"] == pytest.approx([0.009, 0.12, 0.12])
    assert [tests[k]["drift"] for k in "abc"] == [True, False, False]
    assert result["site_level"] == pytest.approx(0.05 / 3)


@pytest.fixture(autouse=True)
def _cheap_gc():
    """statsmodels' Holm runs gc.collect() on every call; with the long-lived objects frozen it is cheap."""
    gc.freeze()
    yield
    gc.unfreeze()


def test_adjusted_p_values_decide_against_alpha_itself():
    rng = np.random.default_rng(1)
    for _ in range(100):
        p = dict(enumerate(rng.uniform(0, 0.05, size=5)))
        result = correct(p, alpha=0.05, n_sites=3)
        for t in result["tests"].values():
            assert t["drift"] == (t["adjusted_p_value"] <= 0.05)
            assert t["adjusted_p_value"] >= t["p_value"]


def test_a_test_that_could_not_be_computed_never_alarms():
    result = correct({"constant column": math.nan, "other": None, "real": 0.0001}, n_sites=1)
    assert result["tests"]["constant column"] == {
        "p_value": 1.0, "adjusted_p_value": 1.0, "drift": False, "computed": False
    }
    assert result["tests"]["other"]["computed"] is False
    assert result["tests"]["real"]["drift"]


def test_family_wise_error_rate_across_sites_and_columns_stays_below_alpha():
    """Under the null (uniform p-values), any alarm at any of 3 sites x 7 tests happens <= 5% of rounds."""
    rng = np.random.default_rng(7)
    rounds, alarms = 1000, 0
    for _ in range(rounds):
        alarms += any(correct(dict(enumerate(rng.uniform(size=7))), n_sites=3)["drift"] for _site in range(3))
    assert 0.02 <= alarms / rounds <= 0.05 + 0.02
    # ... while the uncorrected tests would alarm in most rounds.
    assert np.mean(rng.uniform(size=(rounds, 21)).min(axis=1) < 0.05) > 0.6


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        correct({"a": 0.1}, alpha=0)
    with pytest.raises(ValueError, match="n_sites"):
        correct({"a": 0.1}, n_sites=0)
    with pytest.raises(ValueError, match="'a'"):
        correct({"a": 1.5})
    assert correct({})["drift"] is False

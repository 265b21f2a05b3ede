"""False-alarm control: Holm within a family, Bonferroni across the two families and across sites."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from drift.correction import correct, family_level, holm


def test_holm_within_a_site():
    result = correct({"a": 0.001, "b": 0.02, "c": 0.04}, alpha=0.05, n_sites=1)
    tests = result["tests"]
    # Holm: sorted p times (m, m-1, ...), made monotone: 0.003, 0.04, 0.04.
    assert [tests[k]["adjusted_p_value"] for k in "abc"] == pytest.approx([0.003, 0.04, 0.04])
    assert all(tests[k]["drift"] for k in "abc") and result["drift"]
    assert result["method"] == "holm" and result["level"] == 0.05


def test_holm_matches_statsmodels():
    # statsmodels' Holm runs gc.collect() on every call (why drift/correction.py has its own): with the session's
    # models and reports in memory that is a second a call, unless the objects already there are frozen.
    gc.freeze()
    try:
        rng = np.random.default_rng(0)
        for _ in range(300):
            p = list(rng.uniform(0, 0.1, size=rng.integers(1, 9)))
            reject, adjusted, _, _ = multipletests(p, alpha=0.01, method="holm")
            np.testing.assert_allclose(holm(p), adjusted)
            assert [a <= 0.01 for a in holm(p)] == list(reject)
    finally:
        gc.unfreeze()


def test_sites_share_alpha():
    result = correct({"a": 0.001, "b": 0.02, "c": 0.04}, alpha=0.05, n_sites=3)
    tests = result["tests"]
    assert [tests[k]["adjusted_p_value"] for k in "abc"] == pytest.approx([0.009, 0.12, 0.12])
    assert [tests[k]["drift"] for k in "abc"] == [True, False, False]
    assert result["site_level"] == pytest.approx(0.05 / 3)


def test_the_two_families_split_a_sites_level():
    assert family_level(0.05, 3, "data") == family_level(0.05, 3, "concept") == pytest.approx(0.05 / 6)
    assert family_level(0.05, 3, "data") + family_level(0.05, 3, "concept") == pytest.approx(family_level(0.05, 3))
    concept = correct({"false_negatives": 0.004, "false_positives": 0.5}, 0.05, 3, family="concept")
    assert concept["level"] == pytest.approx(0.05 / 6) and concept["drift"]
    assert concept["tests"]["false_negatives"]["adjusted_p_value"] == pytest.approx(0.008 * 6, rel=1e-9)
    assert not correct({"false_negatives": 0.005, "false_positives": 0.5}, 0.05, 3, family="concept")["drift"]
    with pytest.raises(ValueError, match="family"):
        family_level(0.05, 3, "label")


def test_adjusted_p_values_decide_against_alpha_itself():
    rng = np.random.default_rng(1)
    for _ in range(100):
        p = dict(enumerate(rng.uniform(0, 0.05, size=5)))
        for family in (None, "data", "concept"):
            result = correct(p, alpha=0.05, n_sites=3, family=family)
            for t in result["tests"].values():
                assert t["drift"] == (t["adjusted_p_value"] <= 0.05)
                assert t["adjusted_p_value"] >= t["p_value"]


def test_a_test_that_could_not_be_computed_never_alarms_nor_costs_the_others():
    result = correct({"constant column": math.nan, "other": None, "real": 0.03}, n_sites=1)
    assert result["tests"]["constant column"] == {
        "p_value": 1.0, "adjusted_p_value": 1.0, "drift": False, "computed": False
    }
    assert result["tests"]["other"]["computed"] is False
    # Only the computed test counts in Holm's procedure: 0.03 <= 0.05 on its own.
    assert result["tests"]["real"]["drift"] and result["tests"]["real"]["adjusted_p_value"] == pytest.approx(0.03)


def test_family_wise_error_rate_across_sites_families_and_tests_stays_below_alpha():
    """Under the null (uniform p-values), any alarm at any of 3 sites, data (6 tests) or concept (2 tests),
    happens in <= 5 % of rounds; one site's batch alarms in <= 1.7 %."""
    rng = np.random.default_rng(7)
    rounds, alarms, site_alarms = 2000, 0, 0
    for _ in range(rounds):
        found = []
        for _site in range(3):
            data = correct(dict(enumerate(rng.uniform(size=6))), n_sites=3, family="data")["drift"]
            concept = correct(dict(enumerate(rng.uniform(size=2))), n_sites=3, family="concept")["drift"]
            found.append(data or concept)
        alarms += any(found)
        site_alarms += found[0]
    assert 0.02 <= alarms / rounds <= 0.05 + 0.015
    assert site_alarms / rounds <= 0.05 / 3 + 0.01


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        correct({"a": 0.1}, alpha=0)
    with pytest.raises(ValueError, match="n_sites"):
        correct({"a": 0.1}, n_sites=0)
    with pytest.raises(ValueError, match="'a'"):
        correct({"a": 1.5})
    with pytest.raises(ValueError, match="method"):
        correct({"a": 0.1}, method="bonferroni")
    assert correct({})["drift"] is False

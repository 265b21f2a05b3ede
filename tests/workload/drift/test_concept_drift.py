"""Concept drift: observed against expected failures at the production model's scores, in both directions and on
both sides of its decision threshold; sufficiency, label rate, serial dependence, coverage, files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mledge.onsite.concept_drift import (
    MIN_EXPECTED_FAILURES,
    MIN_ROWS,
    coverage,
    decision_bins,
    evaluate_p_value,
    generate_simulations,
    model_scores,
    row_errors,
    score_bins,
)
from mledge.onsite.drift_evaluation import concept_simulations
from mledge.onsite.features import features


def _rows(rng, n, rate, low=-6.0, high=3.0):
    """n rows with logits uniform in [low, high] and failures drawn from P(failure | logit) = rate(logit)."""
    scores = rng.uniform(low, high, size=n)
    return scores, (rng.random(n) < rate(scores)).astype(int)


def calibrated(scores):
    return 1.0 / (1.0 + np.exp(-scores))  # the model's own probability: a calibrated model


def _p(tmp_path, ref, cur, **kwargs):
    path = tmp_path / "sim.npz"
    generate_simulations(*ref, *cur, path, **kwargs)
    result = evaluate_p_value(path)
    return result, {name: t["p_value"] for name, t in result["tests"].items()}


def test_p_values_are_uniform_under_the_null(tmp_path):
    rng = np.random.default_rng(3)
    found = {"false_negatives": [], "false_positives": []}
    for i in range(250):
        _, p = _p(tmp_path, _rows(rng, 1500, calibrated), _rows(rng, 1000, calibrated), simulations=400, seed=i)
        for name, value in p.items():
            found[name].append(value)
    for name, values in found.items():
        values = np.array(values)
        # Counts are whole numbers and the test two-sided (twice the smaller tail): the p-value is discrete and
        # conservative, never too small.
        assert 0.01 <= np.mean(values <= 0.05) <= 0.07, name
        assert 0.03 <= np.mean(values <= 0.10) <= 0.12, name
        assert 0.45 < np.mean(values) < 0.72, name


@pytest.mark.parametrize(
    ("change", "fires", "quiet", "tail"),
    [
        # New failures where the model says "safe" (a lower overheating limit): false negatives rise.
        (lambda s: calibrated(s) + 0.15 * ((s > -3) & (s <= 0)), "false_negatives", "false_positives", "p_upper"),
        # New failures where the model already says "failure": the error count falls, and is still caught.
        (lambda s: np.where(s > 0, np.minimum(1.0, calibrated(s) + 0.3), calibrated(s)), "false_positives",
         "false_negatives", "p_lower"),
        # Failures vanish where the model says "failure" (a raised limit): false positives rise.
        (lambda s: np.where(s > 0, 0.3 * calibrated(s), calibrated(s)), "false_positives", "false_negatives",
         "p_upper"),
    ],
)
def test_the_test_fires_in_both_directions_on_the_side_that_changed(tmp_path, change, fires, quiet, tail):
    rng = np.random.default_rng(4)
    result, p = _p(tmp_path, _rows(rng, 3000, calibrated), _rows(rng, 1000, change), simulations=2000, seed=0)
    assert p[fires] < 0.002, result["tests"]
    assert result["tests"][fires][tail] < 0.001
    assert p[quiet] > 0.01, result["tests"]


def test_more_hard_rows_without_a_concept_change_is_not_concept_drift(tmp_path):
    """Covariate shift: the batch falls where the model is unsure, P(failure | score) is unchanged."""
    rng = np.random.default_rng(5)
    alarms = 0
    for i in range(40):
        _, p = _p(tmp_path, _rows(rng, 3000, calibrated), _rows(rng, 1000, calibrated, low=-2.0, high=2.0),
                  simulations=400, seed=i)
        alarms += min(p.values()) <= 0.005
    assert alarms <= 2


def test_a_batch_too_small_is_insufficient_and_says_why(tmp_path):
    rng = np.random.default_rng(6)
    ref = _rows(rng, 2000, calibrated)
    small, _ = _p(tmp_path, ref, _rows(rng, MIN_ROWS - 1, calibrated))
    assert not small["sufficient"] and f"< {MIN_ROWS}" in small["insufficient_reason"]
    rare, _ = _p(tmp_path, ref, _rows(rng, 600, lambda s: calibrated(s), low=-8.0, high=-4.0))
    assert rare["expected"]["failures"] < MIN_EXPECTED_FAILURES
    assert not rare["sufficient"] and "expected failures" in rare["insufficient_reason"]
    enough, _ = _p(tmp_path, ref, _rows(rng, 1000, calibrated))
    assert enough["sufficient"] and enough["insufficient_reason"] is None


def test_a_side_without_rows_is_not_tested(tmp_path):
    rng = np.random.default_rng(7)
    result, _ = _p(tmp_path, _rows(rng, 2000, calibrated), _rows(rng, 1000, calibrated, low=-6.0, high=-0.5))
    assert result["computable"] == {"false_negatives": True, "false_positives": False}
    assert result["side_rows"]["false_positives"]["current"] == 0


def test_a_failure_free_batch_is_a_label_rate_finding(tmp_path):
    rng = np.random.default_rng(8)
    scores, _ = _rows(rng, 1000, calibrated)
    result, _ = _p(tmp_path, _rows(rng, 2000, calibrated), (scores, np.zeros(1000, int)))
    label = result["label_rate"]
    assert label["observed"] == 0 and label["share"] == 0.0 and label["expected"] > 50
    assert label["p_value"] < 0.002
    normal, _ = _p(tmp_path, _rows(rng, 2000, calibrated), _rows(rng, 1000, calibrated))
    assert normal["label_rate"]["p_value"] > 0.01 and 0.7 < normal["label_rate"]["share"] < 1.3
    with pytest.raises(ValueError, match="no rows"):
        generate_simulations(*_rows(rng, 200, calibrated), np.array([]), np.array([]), tmp_path / "x.npz")


def _spells(rng, n, start=0):
    """Rows whose failures come in spells: P(failure | score) moves with a slow hidden state (as the temperature
    walks make it), the same process in every stretch of production."""
    scores = rng.uniform(-6.0, 3.0, size=n)
    state = np.repeat(rng.normal(0.0, 1.0, size=n // 250 + 1), 250)[:n]
    return scores, (rng.random(n) < calibrated(scores + 1.2 * state)).astype(int)


def test_serial_dependence_widens_the_null_and_keeps_false_alarms_rare(tmp_path):
    rng = np.random.default_rng(9)
    alarms, factors = 0, []
    for i in range(60):
        result, p = _p(tmp_path, _spells(rng, 12_000), _spells(rng, 1000), simulations=500, seed=i)
        factors.append(result["variance_factor"]["false_negatives"])
        alarms += min(p.values()) <= 0.005
    # Without widening the hypergeometric null called a fifth of these batches drifted.
    assert np.median(factors) > 2.0
    assert alarms <= 2
    iid, _ = _p(tmp_path, _rows(rng, 12_000, calibrated), _rows(rng, 1000, calibrated))
    assert iid["variance_factor"]["false_negatives"] < 1.6


def test_coverage_keeps_rows_where_the_reference_has_data(plant_b_reference, plant_b_stream):
    ref_x = features(plant_b_reference)
    covered = coverage(ref_x, features(plant_b_stream[3]))
    assert covered.mean() > 0.9
    odd = plant_b_stream[3].copy()
    odd["torque_nm"] = odd["torque_nm"] + 60.0  # far beyond anything the window saw
    assert coverage(ref_x, features(odd)).mean() < 0.05


def test_the_simulations_file_holds_counts_not_rows(tmp_path):
    rng = np.random.default_rng(0)
    ref, cur = _rows(rng, 400, calibrated), _rows(rng, 300, calibrated)
    path = tmp_path / "site" / "concept-simulations.npz"
    summary = generate_simulations(*ref, *cur, path, simulations=50, bins=5, seed=1)
    with np.load(path, allow_pickle=False) as stored:
        assert sorted(stored.files) == ["failures", "false_negatives", "false_positives", "summary"]
        assert all(stored[name].shape == (50,) for name in ("failures", "false_negatives", "false_positives"))
        null = stored["false_negatives"]
    result = evaluate_p_value(path)
    observed = summary["observed"]["false_negatives"]
    upper = (1 + np.sum(null >= observed)) / 51
    assert result["tests"]["false_negatives"]["p_upper"] == pytest.approx(upper)
    assert sum(summary["bin_current_rows"]) == 300
    assert all(isinstance(v, int) for v in summary["bin_current_rows"])
    generate_simulations(*ref, *cur, tmp_path / "again.npz", simulations=50, bins=5, seed=1)
    with np.load(tmp_path / "again.npz") as again:
        np.testing.assert_array_equal(again["false_negatives"], null)
    with pytest.raises(FileNotFoundError, match="generate_simulations"):
        evaluate_p_value(tmp_path / "missing.npz")


def test_bins_never_split_ties_nor_straddle_the_decision_threshold():
    scores = np.array([0.0] * 50 + [1.0] * 50 + list(np.linspace(2, 3, 100)))
    bin_of, _ = score_bins(scores, 10)
    assert len(set(bin_of[:50])) == 1 and len(set(bin_of[50:100])) == 1
    rng = np.random.default_rng(2)
    ref, cur = rng.normal(-2, 2, 2000), rng.normal(-2, 2, 1000)
    edges = decision_bins(ref, cur, 10)
    assert 0.0 in edges and len(edges) >= 10


def test_a_real_model_and_a_sensor_offset(plant_b_model, plant_b_reference, plant_b_stream, tmp_path):
    """The champion stand-in on plant_b: clean batch 4 is no drift; from batch 5 the sensor reads 1.5 K high and
    the model misses overheating failures it would have caught: false negatives rise, and within two batches of
    the onset they rise beyond the concept family's first Holm level (0.05 / 3 sites / 2 families / 2 tests)."""
    state = plant_b_model.state_dict()
    batch4 = plant_b_stream[3]
    np.testing.assert_allclose(model_scores(state, batch4), model_scores(plant_b_model, batch4), rtol=1e-6)
    errors = row_errors(model_scores(plant_b_model, batch4), batch4)
    assert set(np.unique(errors)) <= {0, 1} and 0 < errors.mean() < 0.3
    found = {}
    for index in (3, 4, 5):
        path = tmp_path / f"b{index}.npz"
        summary = concept_simulations(plant_b_model, plant_b_reference, plant_b_stream[index], path, seed=index)
        assert summary["reference_rows"] == 600  # the window's held-out rows only
        found[index + 1] = evaluate_p_value(path)["tests"]
    assert min(t["p_value"] for t in found[4].values()) > 0.05
    for batch in (5, 6):
        assert found[batch]["false_negatives"]["observed"] > 1.5 * found[batch]["false_negatives"]["expected"]
        assert found[batch]["false_positives"]["p_value"] > 0.05  # the other side did not change
    assert min(found[b]["false_negatives"]["p_value"] for b in (5, 6)) < 0.05 / 3 / 2 / 2


def test_labels_must_match_rows():
    frame = pd.DataFrame({"machine_failure": [0, 1, 1]})
    np.testing.assert_array_equal(row_errors(np.array([-1.0, 2.0, -0.5]), frame), [0, 0, 1])

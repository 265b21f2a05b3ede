"""Concept drift: the stratified permutation p-value, its files, and its behaviour under null and shift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mledge.onsite.concept_drift import evaluate_p_value, generate_simulations, model_scores, row_errors, score_bins
from mledge.onsite.drift_evaluation import concept_simulations
from mledge.onsite.store import is_held_out


def _rows(rng, n, error_rate, low=-4.0, high=4.0):
    """n rows with scores uniform in [low, high] and errors drawn from P(error | score)."""
    scores = rng.uniform(low, high, size=n)
    return scores, (rng.random(n) < error_rate(scores)).astype(int)


def hard_near_zero(scores):
    return 0.02 + 0.4 * np.exp(-(scores**2))  # the model errs most near its decision boundary


def test_p_value_is_roughly_uniform_under_the_null(tmp_path):
    rng = np.random.default_rng(3)
    p_values = []
    for i in range(300):
        ref = _rows(rng, 600, hard_near_zero)
        cur = _rows(rng, 1000, hard_near_zero)
        generate_simulations(*ref, *cur, tmp_path / "sim.npz", simulations=400, seed=i)
        p_values.append(evaluate_p_value(tmp_path / "sim.npz")["p_value"])
    p_values = np.array(p_values)
    # Error counts are whole numbers, so the p-value is discrete and a little conservative: roughly uniform.
    assert 0.01 <= np.mean(p_values <= 0.05) <= 0.08
    assert 0.04 <= np.mean(p_values <= 0.10) <= 0.14
    assert abs(np.mean(p_values) - 0.5) < 0.06
    deciles = np.histogram(p_values, bins=10, range=(0, 1))[0] / len(p_values)
    assert deciles.min() >= 0.04 and deciles.max() <= 0.17, deciles


def test_p_value_is_small_when_the_errors_shift(tmp_path):
    rng = np.random.default_rng(4)
    ref = _rows(rng, 600, hard_near_zero)
    # A concept change: the model now errs on a third of the rows it scores confidently "no failure".
    cur = _rows(rng, 1000, lambda s: hard_near_zero(s) + 0.3 * (s < -2))
    summary = generate_simulations(*ref, *cur, tmp_path / "sim.npz", simulations=2000, seed=0)
    result = evaluate_p_value(tmp_path / "sim.npz")
    assert result["p_value"] < 0.001
    assert result["statistic"] > 0.01 and result["observed_errors"] > summary["expected_errors"]


def test_more_hard_rows_without_a_concept_change_is_not_concept_drift(tmp_path):
    """Covariate shift: the batch falls more often where the model errs, P(error | score) is unchanged."""
    rng = np.random.default_rng(5)
    misses = {"stratified": 0, "unstratified": 0}
    for i in range(40):
        ref = _rows(rng, 600, hard_near_zero)
        cur = _rows(rng, 1000, hard_near_zero, low=-1.5, high=1.5)  # all near the boundary
        for name, bins in (("stratified", 10), ("unstratified", 1)):
            generate_simulations(*ref, *cur, tmp_path / f"{name}.npz", simulations=400, bins=bins, seed=i)
            misses[name] += evaluate_p_value(tmp_path / f"{name}.npz")["p_value"] <= 0.01
    assert misses["unstratified"] >= 38  # an unstratified permutation calls it drift nearly every time
    assert misses["stratified"] <= 4


def test_the_simulations_file_holds_counts_not_rows(tmp_path):
    rng = np.random.default_rng(0)
    ref, cur = _rows(rng, 200, hard_near_zero), _rows(rng, 300, hard_near_zero)
    path = tmp_path / "site" / "concept-simulations.npz"
    summary = generate_simulations(*ref, *cur, path, simulations=50, bins=5, seed=1)
    with np.load(path, allow_pickle=False) as stored:
        assert sorted(stored.files) == ["null", "summary"]
        null = stored["null"]
    assert null.shape == (50,) and null.min() >= 0 and null.max() <= 300
    result = evaluate_p_value(path)
    assert result["p_value"] == pytest.approx((1 + np.sum(null >= summary["observed_errors"])) / 51)
    assert sum(summary["bin_rows"]) == 500 and sum(summary["bin_current_rows"]) == 300
    # Same seed, same simulations; another seed, others.
    generate_simulations(*ref, *cur, tmp_path / "again.npz", simulations=50, bins=5, seed=1)
    with np.load(tmp_path / "again.npz") as again:
        np.testing.assert_array_equal(again["null"], null)


def test_score_bins_never_split_ties():
    scores = np.array([0.0] * 50 + [1.0] * 50 + list(np.linspace(2, 3, 100)))
    bin_of, _ = score_bins(scores, 10)
    assert len(set(bin_of[:50])) == 1 and len(set(bin_of[50:100])) == 1


def test_bad_inputs_are_named(tmp_path):
    rng = np.random.default_rng(0)
    ref, cur = _rows(rng, 20, hard_near_zero), _rows(rng, 100, hard_near_zero)
    with pytest.raises(ValueError, match="reference rows"):
        generate_simulations(*ref, *cur, tmp_path / "x.npz")
    ref = _rows(rng, 100, hard_near_zero)
    with pytest.raises(ValueError, match="no rows"):
        generate_simulations(*ref, np.array([]), np.array([]), tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError, match="generate_simulations"):
        evaluate_p_value(tmp_path / "missing.npz")


def test_errors_of_a_real_model_and_a_sensor_offset(plant_b_model, plant_b_reference, plant_b_stream, tmp_path):
    """The champion stand-in on plant_b: clean batch 4 is no drift, drifted batch 5 is."""
    state = plant_b_model.state_dict()
    batch4 = plant_b_stream[3]
    np.testing.assert_allclose(model_scores(state, batch4), model_scores(plant_b_model, batch4), rtol=1e-6)
    errors = row_errors(model_scores(plant_b_model, batch4), batch4)
    assert set(np.unique(errors)) <= {0, 1} and 0 < errors.mean() < 0.3
    p = {}
    for index in (3, 4):
        path = tmp_path / f"b{index}.npz"
        summary = concept_simulations(plant_b_model, plant_b_reference, plant_b_stream[index], path, seed=index)
        assert summary["reference_rows"] == int(is_held_out(plant_b_reference).sum())  # held-out rows only
        p[index + 1] = evaluate_p_value(path)["p_value"]
    assert p[4] > 0.05
    assert p[5] < 0.005


def test_labels_must_match_rows():
    frame = pd.DataFrame({"machine_failure": [0, 1, 1]})
    np.testing.assert_array_equal(row_errors(np.array([-1.0, 2.0, -0.5]), frame), [0, 0, 1])

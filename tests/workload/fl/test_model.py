"""Features, confusion counts and metrics, and local training of the axis-failure classifier."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fl.model import AxisFailureMLP, build_model
from fl.protocol import Counts, metrics_from_counts
from mledge.onsite.features import features, labels
from mledge.onsite.schema import LABEL, N_FEATURES, SCALES
from mledge.onsite.store import is_held_out, load_site_data
from mledge.onsite.training import evaluate, train_local


@pytest.fixture(scope="module")
def plant_b(site_stores):
    """plant_b's (x, y) training rows and held-out rows, split as a site splits them."""
    frame = load_site_data(site_stores["plant_b"], "plant_b")
    held = is_held_out(frame)
    train, test = frame[~held], frame[held]
    return (features(train), labels(train)), (features(test), labels(test))


def test_features_shape_and_values(stored_batches):
    frame = stored_batches["plant_a"][0]
    x = features(frame)
    assert x.shape == (len(frame), N_FEATURES)
    assert N_FEATURES == 3 + len(SCALES)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    # One-hot product type in the first three columns, in TYPES order (L, M, H).
    np.testing.assert_array_equal(x[:, :3].sum(axis=1), 1.0)
    np.testing.assert_array_equal(x[:, 0] == 1.0, (frame["type"] == "L").to_numpy())
    np.testing.assert_array_equal(x[:, 2] == 1.0, (frame["type"] == "H").to_numpy())
    # Scaled with fixed constants: about centred and unit-scaled on AI4I-like data.
    assert np.abs(x[:, 3:].mean(axis=0)).max() < 1.5
    assert (x[:, 3:].std(axis=0) < 3).all()


def test_features_encode_the_physics_of_the_rules():
    frame = pd.DataFrame(
        {
            "type": ["L", "M"],
            "air_temperature_k": [300.0, 302.0],
            "process_temperature_k": [310.0, 310.6],
            "rotational_speed_rpm": [1500, 1200],
            "torque_nm": [40.0, 60.0],
            "tool_wear_min": [100, 200],
        }
    )
    x = features(frame)
    names = list(SCALES)
    gap = x[:, 3 + names.index("temperature_gap_k")]
    power = x[:, 3 + names.index("power_kw")]
    strain = x[:, 3 + names.index("strain_knm_min")]
    c, s = SCALES["temperature_gap_k"]
    np.testing.assert_allclose(gap, (np.array([10.0, 8.6]) - c) / s, rtol=1e-5, atol=1e-5)
    c, s = SCALES["power_kw"]
    expected_kw = np.array([40.0 * 1500, 60.0 * 1200]) * 2 * np.pi / 60 / 1000
    np.testing.assert_allclose(power, (expected_kw - c) / s, rtol=1e-5)
    c, s = SCALES["strain_knm_min"]
    np.testing.assert_allclose(strain, (np.array([4.0, 12.0]) - c) / s, rtol=1e-5)


def test_features_do_not_depend_on_other_rows(stored_batches):
    frame = stored_batches["plant_c"][0]
    whole = features(frame)
    part = features(frame.iloc[100:110])
    np.testing.assert_array_equal(whole[100:110], part)


def test_labels_are_the_machine_failure_column(stored_batches):
    frame = stored_batches["plant_a"][1]
    y = labels(frame)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, frame[LABEL].to_numpy(np.float32))


def test_metrics_from_hand_made_counts():
    tp, fp, fn, tn = 3, 1, 2, 94
    metrics = metrics_from_counts(Counts(tp=tp, fp=fp, fn=fn, tn=tn, loss_sum=12.5))
    recall = tp / (tp + fn)
    precision = tp / (tp + fp)
    assert metrics["recall"] == pytest.approx(0.6)
    assert metrics["precision"] == pytest.approx(0.75)
    assert metrics["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert metrics["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert metrics["accuracy"] == pytest.approx(97 / 100)
    assert metrics["loss"] == pytest.approx(12.5 / 100)
    assert set(metrics) == {"loss", "accuracy", "recall", "precision", "f1"}


def test_metrics_without_positives_or_predictions_are_zero_not_errors():
    no_failures = metrics_from_counts(Counts(tp=0, fp=0, fn=0, tn=50, loss_sum=1.0))
    assert no_failures["recall"] == 0.0 and no_failures["precision"] == 0.0 and no_failures["f1"] == 0.0
    assert no_failures["accuracy"] == 1.0
    empty = metrics_from_counts(Counts(0, 0, 0, 0, 0.0))
    assert math.isnan(empty["loss"]) and math.isnan(empty["accuracy"])


def test_counts_add_up_across_sites():
    a = Counts(tp=1, fp=2, fn=3, tn=4, loss_sum=0.5)
    b = Counts(tp=10, fp=20, fn=30, tn=40, loss_sum=1.25)
    total = a + b
    assert total == Counts(tp=11, fp=22, fn=33, tn=44, loss_sum=1.75)
    assert total.n == a.n + b.n == 110
    assert sum([a, b], Counts(0, 0, 0, 0, 0.0)) == total
    # Federated metrics from summed counts are not the mean of per-site metrics.
    assert metrics_from_counts(total)["recall"] == pytest.approx(11 / 44)


def test_build_model_is_seeded():
    x = torch.zeros(1, N_FEATURES)
    assert isinstance(build_model(), AxisFailureMLP)
    for name, value in build_model(seed=3).state_dict().items():
        assert torch.equal(value, build_model(seed=3).state_dict()[name])
    assert not torch.equal(build_model(seed=3)(x), build_model(seed=4)(x))
    assert build_model()(torch.zeros(5, N_FEATURES)).shape == (5,)


def test_evaluate_counts_every_row_once(plant_b):
    _, (x, y) = plant_b
    counts = evaluate(build_model(seed=1), x, y)
    assert counts.n == len(y)
    assert counts.tp + counts.fn == int(y.sum())
    assert counts.fp + counts.tn == int((y == 0).sum())
    assert counts.loss_sum > 0


def test_evaluate_loss_is_the_summed_binary_cross_entropy(plant_b):
    _, (x, y) = plant_b
    model = build_model(seed=2)
    counts = evaluate(model, x[:50], y[:50])
    with torch.no_grad():
        p = torch.sigmoid(model(torch.from_numpy(x[:50]))).double().numpy()
    expected = -np.sum(y[:50] * np.log(p) + (1 - y[:50]) * np.log(1 - p))
    assert counts.loss_sum == pytest.approx(expected, rel=1e-4)
    predicted = p > 0.5
    assert counts.tp == int((predicted & (y[:50] == 1)).sum())
    assert counts.fp == int((predicted & (y[:50] == 0)).sum())


def test_local_training_learns_the_failure_rules(plant_b):
    (x, y), (x_test, y_test) = plant_b
    model = build_model(seed=0)
    before = metrics_from_counts(evaluate(model, x_test, y_test))
    last_loss = train_local(model, x, y, epochs=3, lr=0.005, seed=0)
    after = metrics_from_counts(evaluate(model, x_test, y_test))

    assert np.isfinite(last_loss)
    assert after["loss"] < 0.7 * before["loss"]
    assert after["recall"] > 0.5
    # Not by predicting "failure" everywhere: it is far more accurate and precise than before training.
    assert after["accuracy"] > before["accuracy"] + 0.3
    prevalence = float(y_test.mean())
    assert after["precision"] > 2 * prevalence
    assert after["f1"] > before["f1"]


def test_local_training_is_reproducible_and_in_place(plant_b):
    (x, y), _ = plant_b
    x, y = x[:400], y[:400]
    first, second = build_model(seed=0), build_model(seed=0)
    untouched = {k: v.clone() for k, v in first.state_dict().items()}
    loss_1 = train_local(first, x, y, epochs=1, lr=0.01, seed=7)
    loss_2 = train_local(second, x, y, epochs=1, lr=0.01, seed=7)
    assert loss_1 == loss_2
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name])
    assert any(not torch.equal(v, untouched[k]) for k, v in first.state_dict().items())

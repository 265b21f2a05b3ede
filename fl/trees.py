"""The gradient-boosted trees family (``xgboost``): how a booster travels and what it is trained with.

A booster travels as Flower's XGBoost examples send it, one ``uint8`` array of the model's JSON under key ``"0"``
(what ``flwr.serverapp.strategy.FedXgbBagging`` reads and appends trees to); an empty array is "no trees yet".
The decision threshold (fl/thresholds.py) is a booster attribute, so it travels and is logged with the model;
``margin`` is the booster's raw log-odds minus it (a failure when > 0), as ``fl.model``'s ``forward``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mledge.onsite.schema import FEATURE_NAMES

TREE_KEY = "0"
THRESHOLD_ATTR = "mledge_threshold"
# Per boosting round each site adds one tree fitted to the global model's residuals at its rows; the platform
# appends the sites' trees (bagging), so a round's step is about sites x eta.
PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "max_depth": 6,
    "eta": 0.1,
    "base_score": 0.03,  # the prior failure rate: every site starts from the same intercept
    "tree_method": "hist",
    "nthread": 1,
}


def is_tree_record(arrays: Mapping[str, Any]) -> bool:
    """Whether a model's arrays (ArrayRecord or dict) hold a booster rather than a torch state."""
    return list(arrays.keys()) == [TREE_KEY]


def to_array(raw: bytes) -> np.ndarray:
    return np.frombuffer(bytes(raw), dtype=np.uint8).copy()


def to_bytes(array: Any) -> bytes:
    """The booster JSON of an array (a numpy array or a Flower Array)."""
    data = array.numpy() if hasattr(array, "numpy") and not isinstance(array, np.ndarray) else np.asarray(array)
    return np.asarray(data, dtype=np.uint8).tobytes()


def load_booster(raw: bytes) -> Any:
    """A booster from its JSON (None for no trees yet)."""
    import xgboost as xgb

    if not raw:
        return None
    booster = xgb.Booster(params=PARAMS, model_file=bytearray(raw))
    booster.feature_names = list(FEATURE_NAMES)
    return booster


def save_booster(booster: Any) -> bytes:
    return bytes(booster.save_raw("json"))


def threshold_of(booster: Any) -> float:
    value = booster.attr(THRESHOLD_ATTR)
    return float(value) if value is not None else 0.0


def with_threshold(raw: bytes, threshold: float) -> bytes:
    """The same trees read at ``threshold`` (a logit)."""
    booster = load_booster(raw)
    booster.set_attr(**{THRESHOLD_ATTR: repr(float(threshold))})
    return save_booster(booster)


def matrix(x: np.ndarray, y: np.ndarray | None = None) -> Any:
    import xgboost as xgb

    return xgb.DMatrix(x, label=y, feature_names=list(FEATURE_NAMES))


def raw_scores(booster: Any, x: np.ndarray) -> np.ndarray:
    """Log-odds of a failure per row (untuned: threshold 0 is probability 0.5)."""
    if booster is None:
        return np.full(len(x), float(np.log(PARAMS["base_score"] / (1 - PARAMS["base_score"]))))
    return booster.predict(matrix(x), output_margin=True).astype(float)


def margin(booster: Any, x: np.ndarray) -> np.ndarray:
    """The decision margin: log-odds minus the stored threshold (a failure when > 0)."""
    return raw_scores(booster, x) - (threshold_of(booster) if booster is not None else 0.0)

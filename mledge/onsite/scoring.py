"""One scoring interface for every model family: what evaluation, the promotion gate and drift detection call.

``scores(model, frame)`` gives each row's decision margin: the model's log-odds of a failure minus its stored
decision threshold, so a failure is predicted where the score is above 0, for the MLP (fl/model.py) and the
boosted trees (fl/trees.py) alike. ``model`` may be a loaded model (torch module or xgboost Booster), a model's
arrays as they travel (a torch state dict, or the booster's ``{"0": uint8 JSON}``), or a Flower ArrayRecord.
``load_registered`` loads a registered model version from MLflow by its flavour.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from fl import trees
from fl.protocol import Counts
from mledge.onsite.features import features

MLP, XGBOOST = "mlp", "xgboost"


def as_model(model: Any) -> Any:
    """A model ready to score: a torch module (eval mode) or an xgboost Booster (None: a booster with no trees)."""
    if model is None or type(model).__name__ == "Booster":
        return model
    if hasattr(model, "to_torch_state_dict") and not trees.is_tree_record(model):  # a Flower ArrayRecord
        model = model.to_torch_state_dict()
    if isinstance(model, Mapping) or hasattr(model, "keys"):
        if trees.is_tree_record(model):
            return trees.load_booster(trees.to_bytes(model[trees.TREE_KEY]))
        from fl.model import model_from_state

        model = model_from_state(model)
    model.eval()
    return model


def raw_scores(model: Any, x: np.ndarray) -> np.ndarray:
    """Log-odds of a failure per row of the model input ``x`` (threshold not applied)."""
    model = as_model(model)
    if model is None or type(model).__name__ == "Booster":
        return trees.raw_scores(model, x)
    import torch

    with torch.no_grad():
        xt = torch.from_numpy(x)
        return (model.logits(xt) if hasattr(model, "logits") else model(xt)).numpy().astype(float)


def threshold_of(model: Any) -> float:
    model = as_model(model)
    if model is None:
        return 0.0
    if type(model).__name__ == "Booster":
        return trees.threshold_of(model)
    return float(model.threshold.item()) if hasattr(model, "threshold") else 0.0


def margins(model: Any, x: np.ndarray) -> np.ndarray:
    """Decision margins of the model input ``x``: a failure where > 0."""
    model = as_model(model)
    return raw_scores(model, x) - threshold_of(model)


def scores(model: Any, frame: pd.DataFrame) -> np.ndarray:
    """Decision margins of a batch of rows (a failure where > 0): what concept drift bins and tests."""
    if len(frame) == 0:
        return np.empty(0)
    return margins(model, features(frame))


def log_loss_sum(logits: np.ndarray, y: np.ndarray) -> float:
    """Summed binary cross-entropy of log-odds against labels (numerically stable)."""
    z = np.asarray(logits, float)
    return float(np.sum(np.logaddexp(0.0, z) - np.asarray(y, float) * z))


def counts(model: Any, x: np.ndarray, y: np.ndarray) -> Counts:
    """Confusion counts at the model's threshold and the summed log-loss of its log-odds."""
    model = as_model(model)
    raw = raw_scores(model, x)
    pred = raw - threshold_of(model) > 0
    truth = np.asarray(y) > 0.5
    return Counts(
        tp=int((pred & truth).sum()),
        fp=int((pred & ~truth).sum()),
        fn=int((~pred & truth).sum()),
        tn=int((~pred & ~truth).sum()),
        loss_sum=log_loss_sum(raw, y),
    )


def load_registered(name: str, version: str) -> Any:
    """A registered model version, loaded by its MLflow flavour (that exact version)."""
    import mlflow

    uri = f"models:/{name}/{version}"
    flavors = mlflow.models.get_model_info(uri).flavors
    if "xgboost" in flavors:
        booster = mlflow.xgboost.load_model(uri)
        return booster.get_booster() if hasattr(booster, "get_booster") else booster
    from fl.model import model_from_state

    loaded = mlflow.pytorch.load_model(uri)
    # MLflow's default pt2 format loads as a torch.export program (no eval()); its weights carry the module's
    # names, so they load into a fresh MLP.
    state = loaded.state_dict() if callable(loaded.state_dict) else loaded.state_dict
    return as_model(model_from_state(dict(state)))


def to_arrays(model: Any) -> dict[str, Any]:
    """A loaded model as the arrays it travels as (torch state dict, or the booster's JSON bytes)."""
    if type(model).__name__ == "Booster":
        return {trees.TREE_KEY: trees.to_array(trees.save_booster(model))}
    return dict(model.state_dict())

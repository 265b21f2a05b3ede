"""Model families at the platform: what the ServerApp starts from, sends, aggregates with and logs, per family.

``mlp`` (fl/model.py): FedAvg or any robust rule of fl/strategies/, a cosine learning-rate schedule over the
rounds, early stopping on the sites' validation loss. ``xgboost`` (fl/trees.py): Flower's FedXgbBagging (one new
tree per site and round, appended), early stopping alike. Both: the decision threshold chosen from the sites'
pooled validation counts (fl/thresholds.py) and stored in the model; logged with MLflow's matching flavour and a
signature with named features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord

from fl import model as mlp
from fl import trees
from fl.convergence import cosine_lr
from mledge.contracts import (
    CLASS_WEIGHT,
    DEFAULT_MODEL_FAMILY,
    MODEL_FAMILIES,
    MODEL_FAMILY_KEY,
    PERSONAL_EPOCHS,
    PERSONAL_ROUNDS,
    RECENT_BATCHES,
    XGBOOST,
)
from mledge.onsite.schema import FEATURE_NAMES

XGBOOST_PIP = ["xgboost-cpu==3.2.0"]


def family_of(cfg: Mapping[str, Any]) -> str:
    """The run's model family (run config ``model-family``); a clear error for an unknown one."""
    family = str(cfg.get(MODEL_FAMILY_KEY, DEFAULT_MODEL_FAMILY)).strip().lower() or DEFAULT_MODEL_FAMILY
    if family not in MODEL_FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid: {', '.join(MODEL_FAMILIES)}")
    return family


def initial_arrays(family: str, seed: int = 0) -> ArrayRecord:
    if family == XGBOOST:
        return ArrayRecord([np.empty(0, dtype=np.uint8)])  # no trees yet: the sites boost from the base score
    return ArrayRecord(mlp.build_model(seed=seed).state_dict())


def round_config(family: str, cfg: Mapping[str, Any], rounds: int) -> Callable[[int], ConfigRecord]:
    """The train message's config of each round (the MLP's learning rate follows a cosine over ``rounds``)."""
    if family == XGBOOST:
        return lambda rnd: ConfigRecord({MODEL_FAMILY_KEY: XGBOOST, "local-rounds": 1})

    def config(rnd: int) -> ConfigRecord:
        return ConfigRecord(
            {
                MODEL_FAMILY_KEY: family,
                "local-epochs": int(cfg["local-epochs"]),
                "learning-rate": cosine_lr(float(cfg["learning-rate"]), rnd, rounds),
                "class-weight": float(cfg.get("class-weight", CLASS_WEIGHT)),
            }
        )

    return config


def finalise_config(family: str, cfg: Mapping[str, Any]) -> ConfigRecord:
    return ConfigRecord(
        {
            MODEL_FAMILY_KEY: family,
            "learning-rate": float(cfg["learning-rate"]),
            "class-weight": float(cfg.get("class-weight", CLASS_WEIGHT)),
            "personal-epochs": int(cfg.get("personal-epochs", PERSONAL_EPOCHS)),
            "personal-rounds": int(cfg.get("personal-rounds", PERSONAL_ROUNDS)),
            "recent-batches": int(cfg.get("recent-batches", RECENT_BATCHES)),
        }
    )


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    """A model's arrays by name, as the outbox keeps them."""
    return {key: array.numpy() for key, array in record.items()}


def record_of(state: Mapping[str, Any]) -> ArrayRecord:
    """A model's arrays (torch state dict, numpy arrays, or a booster's ``{"0": bytes}``) as an ArrayRecord."""
    if trees.is_tree_record(state):
        return ArrayRecord([np.asarray(state[trees.TREE_KEY], dtype=np.uint8)])
    import torch

    return ArrayRecord({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})


def with_threshold(record: ArrayRecord, threshold: float) -> ArrayRecord:
    """The same model, read at ``threshold`` from now on."""
    if trees.is_tree_record(record):
        raw = trees.with_threshold(trees.to_bytes(record[trees.TREE_KEY]), threshold)
        return ArrayRecord([trees.to_array(raw)])
    return record_of(mlp.with_threshold(arrays_of(record), threshold))


def signature(output: np.ndarray) -> Any:
    """Named model input (fl/model.py's feature order) and the decision margin as output."""
    import pandas as pd
    from mlflow.models import infer_signature

    return infer_signature(pd.DataFrame(np.zeros((2, len(FEATURE_NAMES)), np.float32), columns=FEATURE_NAMES), output)


def log_booster(state: Mapping[str, Any]) -> Any:
    """Log a booster with MLflow's xgboost flavour (inside an active run); returns the model info."""
    import mlflow

    booster = trees.load_booster(trees.to_bytes(state[trees.TREE_KEY]))
    example = np.zeros((2, len(FEATURE_NAMES)), np.float32)
    return mlflow.xgboost.log_model(
        booster, name="model", signature=signature(trees.margin(booster, example)), pip_requirements=XGBOOST_PIP,
        model_format="json",
    )

"""The axis-failure classifier: features, a small torch MLP, local training and evaluation.

Features are scaled with fixed constants from the AI4I 2020 nominal ranges, not with statistics of any site's
data, so no site has to share its data distribution to agree on the model's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from fl.generator import LABEL, TYPES

# (centre, scale) per numeric feature, from the AI4I 2020 nominal ranges.
SCALES = {
    "air_temperature_k": (300.0, 2.0),
    "process_temperature_k": (310.0, 1.5),
    "rotational_speed_rpm": (1540.0, 180.0),
    "torque_nm": (40.0, 10.0),
    "tool_wear_min": (110.0, 65.0),
    # Physics the failure rules are written in: cooling gap, mechanical power, overstrain.
    "temperature_gap_k": (10.0, 1.0),
    "power_kw": (6.4, 1.5),
    "strain_knm_min": (4.4, 3.0),
}
N_FEATURES = len(TYPES) + len(SCALES)


def features(frame: pd.DataFrame) -> np.ndarray:
    """Model input for a batch of processes: one-hot product type plus scaled physical quantities."""
    raw = {
        "air_temperature_k": frame["air_temperature_k"].to_numpy(float),
        "process_temperature_k": frame["process_temperature_k"].to_numpy(float),
        "rotational_speed_rpm": frame["rotational_speed_rpm"].to_numpy(float),
        "torque_nm": frame["torque_nm"].to_numpy(float),
        "tool_wear_min": frame["tool_wear_min"].to_numpy(float),
    }
    raw["temperature_gap_k"] = raw["process_temperature_k"] - raw["air_temperature_k"]
    raw["power_kw"] = raw["torque_nm"] * raw["rotational_speed_rpm"] * 2 * np.pi / 60 / 1000
    raw["strain_knm_min"] = raw["torque_nm"] * raw["tool_wear_min"] / 1000
    scaled = [(raw[name] - centre) / scale for name, (centre, scale) in SCALES.items()]
    onehot = [(frame["type"].to_numpy() == t).astype(float) for t in TYPES]
    return np.column_stack(onehot + scaled).astype(np.float32)


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[LABEL].to_numpy(np.float32)


class AxisFailureMLP(nn.Module):
    """Two hidden layers; one logit for 'machine failure'."""

    def __init__(self, n_features: int = N_FEATURES, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def build_model(seed: int = 0) -> AxisFailureMLP:
    torch.manual_seed(seed)
    return AxisFailureMLP()


@dataclass(frozen=True)
class Counts:
    """Confusion counts for the failure class; they add up across sites, so global metrics stay exact."""

    tp: int
    fp: int
    fn: int
    tn: int
    loss_sum: float

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn,
            self.loss_sum + other.loss_sum,
        )


def metrics_from_counts(c: Counts) -> dict[str, float]:
    """Loss, accuracy, and recall, precision and F1 of the (rare) failure class."""
    recall = c.tp / (c.tp + c.fn) if c.tp + c.fn else 0.0
    precision = c.tp / (c.tp + c.fp) if c.tp + c.fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "loss": c.loss_sum / c.n if c.n else float("nan"),
        "accuracy": (c.tp + c.tn) / c.n if c.n else float("nan"),
        "recall": recall,
        "precision": precision,
        "f1": f1,
    }


def _pos_weight(y: np.ndarray) -> torch.Tensor:
    # Failures are about 3 % of processes: weigh them up so the model does not learn "never fails".
    positives = float(y.sum())
    return torch.tensor(min((len(y) - positives) / positives, 30.0) if positives else 1.0)


def train_local(
    model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch_size: int = 64, seed: int = 0
) -> float:
    """Train in place on one site's data; returns the mean training loss of the last epoch."""
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=_pos_weight(y))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        last = total / len(xt)
    return last


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> Counts:
    model.eval()
    logits = model(torch.from_numpy(x))
    loss_sum = nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y), reduction="sum").item()
    pred = (logits > 0).numpy()
    truth = y.astype(bool)
    return Counts(
        tp=int((pred & truth).sum()),
        fp=int((pred & ~truth).sum()),
        fn=int((~pred & truth).sum()),
        tn=int((~pred & ~truth).sum()),
        loss_sum=float(loss_sum),
    )

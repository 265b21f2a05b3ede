"""The federated model: a small torch MLP over the site features, the weights' shape both ends agree on.

The ServerApp builds it to start from and to log to MLflow; the sites train it (mledge/onsite/training.py).
Only the input width comes from the data schema; no row is read here.
"""

from __future__ import annotations

import torch
from torch import nn

from mledge.onsite.schema import N_FEATURES


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

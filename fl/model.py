"""The neural model family (``mlp``): a small torch MLP over the site features, the weights' shape both ends agree on.

The ServerApp builds it to start from and to log to MLflow; the sites train it (mledge/onsite/training.py).
Only the input width comes from the data schema; no row is read here.

The model carries its decision threshold (fl/thresholds.py) as a buffer: ``logits`` is the raw log-odds the
sites train on, ``forward`` the decision margin ``logit - threshold`` (a failure when > 0), which is what the
logged MLflow model returns and what every evaluation, the promotion gate and concept drift score.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mledge.onsite.schema import N_FEATURES

HIDDEN = 32
THRESHOLD_KEY = "threshold"


class AxisFailureMLP(nn.Module):
    """Two hidden layers; one logit for 'machine failure', and the decision threshold it is read at."""

    def __init__(self, n_features: int = N_FEATURES, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        self.register_buffer(THRESHOLD_KEY, torch.zeros(1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x) - self.threshold


def build_model(seed: int = 0, hidden: int = HIDDEN) -> AxisFailureMLP:
    torch.manual_seed(seed)
    return AxisFailureMLP(hidden=hidden)


def model_from_state(state: Mapping[str, torch.Tensor]) -> AxisFailureMLP:
    """The MLP of a state dict, whatever its hidden width; a state from before thresholds reads at logit 0."""
    state = {k: torch.as_tensor(v) for k, v in state.items()}
    model = AxisFailureMLP(hidden=int(state["net.0.weight"].shape[0]))
    state.setdefault(THRESHOLD_KEY, torch.zeros(1))
    model.load_state_dict(state)
    return model


def with_threshold(state: Mapping[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """The same weights read at ``threshold`` (a logit)."""
    return {**{k: torch.as_tensor(v) for k, v in state.items()}, THRESHOLD_KEY: torch.tensor([float(threshold)])}

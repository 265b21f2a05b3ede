"""Helpers shared by the drift tests (a module of its own: test files cannot import conftest)."""

from __future__ import annotations

import pandas as pd

from fl.model import build_model
from mledge.onsite.features import features, labels
from mledge.onsite.generator import generate_batch
from mledge.onsite.profiles import PROFILES as SITES
from mledge.onsite.store import is_held_out
from mledge.onsite.training import train_local


def stream(site: str, batches: int, drifts=(), rows: int = 1000) -> list[pd.DataFrame]:
    """A site's first ``batches`` batches under the given drifts, as the store would hold them."""
    state, frames = None, []
    for index in range(1, batches + 1):
        frame, state = generate_batch(SITES[site], index, state, rows=rows, drifts=drifts)
        frames.append(frame)
    return frames


def trained_model(reference: pd.DataFrame, epochs: int = 8):
    """The stand-in for a champion: trained on the window's rows that are not held out, like a site trains."""
    train = reference[~is_held_out(reference)]
    model = build_model(seed=0)
    train_local(model, features(train), labels(train), epochs=epochs, lr=0.005)
    return model

"""A model's arrays as one flat float64 vector and back: what clipping, noise and norms are computed on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord


def to_vector(arrays: ArrayRecord) -> np.ndarray:
    """Every array of ``arrays``, in its order, flattened into one float64 vector."""
    parts = [np.asarray(a.numpy(), dtype=np.float64).ravel() for a in arrays.values()]
    return np.concatenate(parts) if parts else np.zeros(0)


def to_arrays(vector: np.ndarray, like: ArrayRecord) -> ArrayRecord:
    """``vector`` cut into the keys, shapes and dtypes of ``like`` (the inverse of to_vector)."""
    out, start = {}, 0
    for key, array in like.items():
        value = array.numpy()
        stop = start + value.size
        out[key] = Array(np.asarray(vector[start:stop], dtype=value.dtype).reshape(value.shape))
        start = stop
    if start != vector.size:
        raise ValueError(f"a vector of {vector.size} values does not fit arrays of {start} values")
    return ArrayRecord(out)


def split(vector: np.ndarray, like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``vector`` cut into the shapes of ``like`` (float64)."""
    out, start = [], 0
    for array in like:
        out.append(vector[start:start + array.size].reshape(array.shape))
        start += array.size
    return out

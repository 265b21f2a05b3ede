"""Flat views of ArrayRecords: decode without copies or garbage collections, stack clients, rebuild, average.

Every strategy in this package works on one ``(clients, parameters)`` matrix. ``Array.numpy()`` copies each
payload through a ``BytesIO`` and ``ArrayRecord.to_numpy_ndarrays(keep_input=False)`` runs ``gc.collect()``
(about 0.25 s with torch imported), so the hot path here reads the ``.npy`` header itself and maps the payload
with ``np.frombuffer``: one copy per client, into its row of the matrix, and no collection.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord

# Array.stype of payloads written by np.save (flwr.common.constant.SType.NUMPY).
NUMPY_STYPE = "numpy.ndarray"


class PayloadError(ValueError):
    """An Array whose bytes are not the array its metadata declares."""


def array_view(array: Array) -> np.ndarray:
    """The Array's values as a read-only ndarray over its bytes (no copy).

    Raises PayloadError when the payload is not a plain ``.npy`` array of the declared dtype and shape, so that a
    client cannot declare one shape and send another.
    """
    if array.stype != NUMPY_STYPE:
        raise PayloadError(f"unsupported serialisation {array.stype!r}")
    stream = io.BytesIO(array.data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise PayloadError(f"unsupported .npy version {version}")
    except ValueError as exc:  # a malformed header
        raise PayloadError(f"unreadable payload: {exc}") from exc
    if dtype.hasobject:
        raise PayloadError("object arrays are not accepted")
    if str(dtype) != array.dtype or tuple(shape) != tuple(array.shape):
        raise PayloadError(f"payload holds {dtype}{list(shape)} but declares {array.dtype}{list(array.shape)}")
    count = math.prod(shape)
    offset = stream.tell()
    if len(array.data) - offset != count * dtype.itemsize:
        raise PayloadError(f"payload has {len(array.data) - offset} bytes for {count} x {dtype}")
    flat = np.frombuffer(array.data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of a model's arrays, in record order: how to flatten and rebuild it."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, record: ArrayRecord) -> Layout:
        return cls(
            keys=tuple(record.keys()),
            shapes=tuple(tuple(a.shape) for a in record.values()),
            dtypes=tuple(a.dtype for a in record.values()),
        )

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    @property
    def compute_dtype(self) -> np.dtype:
        """float64 when the model holds any float64 array, else float32 (the arithmetic of every strategy here)."""
        wide = any(np.dtype(d) == np.float64 for d in self.dtypes)
        return np.dtype(np.float64 if wide else np.float32)

    def difference(self, record: ArrayRecord) -> str | None:
        """Why ``record`` does not have this layout, or None when it does."""
        keys = tuple(record.keys())
        if set(keys) != set(self.keys):
            missing, extra = sorted(set(self.keys) - set(keys)), sorted(set(keys) - set(self.keys))
            return f"array keys differ from the global model (missing {missing}, unexpected {extra})"
        for key, shape, dtype in zip(self.keys, self.shapes, self.dtypes, strict=True):
            array = record[key]
            if tuple(array.shape) != shape:
                return f"array {key!r} has shape {list(array.shape)}, the global model {list(shape)}"
            if array.dtype != dtype:
                return f"array {key!r} has dtype {array.dtype}, the global model {dtype}"
        return None


def flatten_into(record: ArrayRecord, layout: Layout, out: np.ndarray) -> np.ndarray:
    """Write the record's arrays, in the layout's order, into the 1-D ``out`` (casting to its dtype)."""
    start = 0
    for key, size in zip(layout.keys, layout.sizes, strict=True):
        out[start : start + size] = array_view(record[key]).reshape(-1)
        start += size
    return out


def flatten(record: ArrayRecord, layout: Layout | None = None, dtype: np.dtype | None = None) -> np.ndarray:
    """The record as one 1-D vector in the layout's compute dtype."""
    layout = layout or Layout.of(record)
    return flatten_into(record, layout, np.empty(layout.size, dtype or layout.compute_dtype))


def stack(records: Sequence[ArrayRecord], layout: Layout, dtype: np.dtype | None = None) -> np.ndarray:
    """The records as the rows of one ``(clients, parameters)`` matrix: one copy per client."""
    matrix = np.empty((len(records), layout.size), dtype or layout.compute_dtype)
    for row, record in zip(matrix, records, strict=True):
        flatten_into(record, layout, row)
    return matrix


def unflatten(vector: np.ndarray, layout: Layout) -> ArrayRecord:
    """Rebuild an ArrayRecord of the layout's keys, shapes and dtypes from a flat vector."""
    record = ArrayRecord()
    start = 0
    for key, shape, dtype, size in zip(layout.keys, layout.shapes, layout.dtypes, layout.sizes, strict=True):
        part = vector[start : start + size].reshape(shape)
        target = np.dtype(dtype)
        if target.kind in "iub":  # integer buffers (e.g. counters): round instead of truncating
            part = np.rint(part)
        record[key] = Array(np.array(part, dtype=target, order="C"))  # (ascontiguousarray makes 0-d arrays 1-d)
        start += size
    return record


def normalised(weights: np.ndarray) -> np.ndarray:
    """Non-negative weights scaled to sum to 1 (float64); uniform when they sum to 0."""
    weights = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    total = weights.sum()
    if not np.isfinite(total) or total <= 0.0:
        return np.full(len(weights), 1.0 / len(weights))
    return weights / total


def weighted_average(matrix: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ_i w_i x_i over the matrix rows, weights normalised first (one BLAS matrix-vector product)."""
    return normalised(weights).astype(matrix.dtype) @ matrix

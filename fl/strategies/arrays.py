"""Flat views of ArrayRecords: decode without copies or garbage collections, stack clients, rebuild, average.

``Array.numpy()`` copies each payload through a ``BytesIO`` and ``ArrayRecord.to_numpy_ndarrays(keep_input=False)``
runs ``gc.collect()`` (about 0.25 s with torch imported), so the hot paths here read the ``.npy`` header themselves
(parsed once per distinct header) and map the payload with ``np.frombuffer``. Coordinate-wise rules stack the
clients into one ``(clients, parameters)`` matrix (one copy per client); rules that only weigh whole models
(FedQV) take dot products and weighted sums over the payloads where they lie, with no copy at all.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord

# Array.stype of payloads written by np.save (flwr.common.constant.SType.NUMPY).
NUMPY_STYPE = "numpy.ndarray"
# Values per block when summing payloads: 128 KiB of float32, so that scaling and adding stay in cache.
SUM_BLOCK = 2**15


class PayloadError(ValueError):
    """An Array whose bytes are not the array its metadata declares."""


@functools.lru_cache(maxsize=1024)
def _header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype, str, int]:
    """(shape, fortran order, dtype, dtype name, payload offset) of a ``.npy`` header, parsed by NumPy.

    Cached by the header's bytes: every client's copy of a layer has the same header, and NumPy's parser (an
    ``ast.literal_eval``) costs about 0.4 ms, which at 100 clients x 3 reads per round outweighed the arithmetic.
    """
    stream = io.BytesIO(prefix)
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
    return tuple(shape), bool(fortran_order), dtype, str(dtype), stream.tell()


def _header_prefix(data: bytes) -> bytes:
    """The magic string, version, length and header of a ``.npy`` payload (what ``_header`` parses)."""
    if data[6:7] == b"\x01":
        size = 10 + int.from_bytes(data[8:10], "little")
    else:  # version 2 (and anything else, which _header refuses) has a 4-byte header length
        size = 12 + int.from_bytes(data[8:12], "little")
    return bytes(data[: min(size, len(data))])


def array_view(array: Array) -> np.ndarray:
    """The Array's values as a read-only ndarray over its bytes (no copy).

    Raises PayloadError when the payload is not a plain ``.npy`` array of the declared dtype and shape, so that a
    client cannot declare one shape and send another.
    """
    if array.stype != NUMPY_STYPE:
        raise PayloadError(f"unsupported serialisation {array.stype!r}")
    shape, fortran_order, dtype, name, offset = _header(_header_prefix(array.data))
    if dtype.hasobject:
        raise PayloadError("object arrays are not accepted")
    if name != array.dtype or shape != tuple(array.shape):
        raise PayloadError(f"payload holds {dtype}{list(shape)} but declares {array.dtype}{list(array.shape)}")
    count = math.prod(shape)
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


def flat_views(record: ArrayRecord, layout: Layout, dtype: np.dtype | None = None) -> list[np.ndarray]:
    """The record's arrays in the layout's order as flat read-only views of their payloads, in ``dtype`` (the
    layout's compute dtype by default); only an array of another dtype is copied, to cast it."""
    dtype = np.dtype(dtype or layout.compute_dtype)
    return [np.asarray(array_view(record[key]).reshape(-1), dtype=dtype) for key in layout.keys]


def dot_products(
    records: Sequence[ArrayRecord], layout: Layout, reference: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(x_i · g, x_i · x_i) for every record x_i and the flat vector g, layer by layer over views of the payloads.

    No stacked copy of the clients: each payload is read where it lies (twice, by BLAS dot products in the
    compute dtype, as the stacked matrix product did), so a similarity rule costs about what an average does.
    """
    dots, squares = np.zeros(len(records)), np.zeros(len(records))
    bounds = np.cumsum((0, *layout.sizes))
    parts = [reference[start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]
    for i, record in enumerate(records):
        for view, part in zip(flat_views(record, layout, reference.dtype), parts, strict=True):
            dots[i] += float(view @ part)
            squares[i] += float(view @ view)
    return dots, squares


def weighted_sum(records: Sequence[ArrayRecord], layout: Layout, weights: np.ndarray) -> ArrayRecord:
    """Σ_i w_i x_i (weights normalised first) over views of the payloads, rebuilt as an ArrayRecord of the layout.

    No (clients, parameters) matrix: each payload is read once where it lies, scaled into a small scratch block
    and added to one accumulator (blocks stay in cache; BLAS axpy would copy the read-only payloads first).
    Clients are added in the order given (the validated replies are sorted by site), so the result does not
    depend on the order the replies arrived in.
    """
    dtype = layout.compute_dtype
    total = np.zeros(layout.size, dtype)
    scratch = np.empty(min(SUM_BLOCK, max(layout.sizes, default=0)), dtype)
    bounds = np.cumsum((0, *layout.sizes))
    parts = [total[start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]
    for weight, record in zip(normalised(weights).astype(dtype), records, strict=True):
        if weight == 0:
            continue
        for view, part in zip(flat_views(record, layout, dtype), parts, strict=True):
            for start in range(0, part.size, SUM_BLOCK):
                block = part[start : start + SUM_BLOCK]
                tmp = np.multiply(view[start : start + SUM_BLOCK], weight, out=scratch[: block.size])
                np.add(block, tmp, out=block)
    return unflatten(total, layout)


def sampled_columns(
    records: Sequence[ArrayRecord], layout: Layout, count: int, rng: np.random.Generator
) -> np.ndarray:
    """A ``(clients, count)`` matrix of ``count`` coordinates drawn uniformly without replacement (the same ones
    for every client, in flat order), read from the payloads where they lie; every coordinate when the model has
    no more than ``count``."""
    if layout.size <= count:
        return stack(records, layout)
    columns = np.sort(rng.choice(layout.size, size=count, replace=False))
    bounds = np.cumsum((0, *layout.sizes))
    cuts = np.searchsorted(columns, bounds)
    out = np.empty((len(records), count), layout.compute_dtype)
    for row, record in zip(out, records, strict=True):
        for k, view in enumerate(flat_views(record, layout)):
            if cuts[k + 1] > cuts[k]:
                row[cuts[k] : cuts[k + 1]] = view[columns[cuts[k] : cuts[k + 1]] - bounds[k]]
    return out


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

"""Siegel's repeated-median line per model coordinate, and the residual-based outlier restriction built on it.

Papers: A. F. Siegel, "Robust regression using repeated medians", Biometrika 69(1), 1982 (the line);
S. Fu, C. Xie, B. Li, Q. Chen, "Attack-Resistant Federated Learning with Residual-based Reweighting",
arXiv 1912.11464 (the residuals, their robust scale and the confidence ω); used by Chu et al., NDSS 2023
(fl/strategies/reputation_residual.py) and by FedQV + reputation (fl/strategies/fedqv.py).

Per coordinate the n clients' values are sorted (y) against their ranks (x = 0..n-1) and the line is
slope = med_i med_{j != i} (y_i - y_j) / (x_i - x_j), intercept = med(y) - slope med(x).

Exact, that is n (n - 1) slopes per coordinate: 10^10 at n = 100, d = 1e6, minutes of CPU. So the inner median
may be taken over k = ``partners`` slopes per point instead of all n - 1 (the outer median stays over all n
points), the partners forming a stratified sample: seen from point i, the n - 1 other points in cyclic rank order
(i + 1, i + 2, ..., wrapping round) are cut into k strata of equal length and one partner is drawn uniformly in
each. Every other point is then a partner with probability k / (n - 1), independently across strata, so for any
value q the share of a point's sampled slopes <= q is an average of k independent indicators whose mean is the
share of all its slopes <= q, and Hoeffding's inequality gives the stated bound:

    a point's sampled inner median lies between the (1/2 - eps)- and (1/2 + eps)-quantiles of all its n - 1
    slopes, except with probability <= 2 exp(-2 k eps^2) (k = 16: <= 0.12 for eps = 0.3, <= 0.01 for eps = 0.41);

and if B of the n points miss that band, the slope lies between the (ceil(n/2) - B)-th smallest of the points'
(1/2 - eps)-quantiles and the (floor(n/2) + 1 + B)-th smallest of their (1/2 + eps)-quantiles (the outer median
moves by at most B order statistics), with E[B] <= 2 n exp(-2 k eps^2). Tests check both statements against the
exact line. Stratifying by rank also keeps the breakdown close to the exact one's when attackers sit together at
one end of the sorted values (the usual case): every point samples them in proportion, within one stratum.

The same k offsets serve every point of a block of ``BLOCK`` coordinates (a fresh draw per block, from the seed
and the block's index): that is what lets the slopes of one offset be built as contiguous slices, without a
gather, and the inner medians come from a median selection network over k arrays rather than from per-row sorts.
The line is exact when n - 1 <= 2k (33 sites at k = 16: there the exact line costs at most twice the sampled one),
when ``partners`` is None, and where torch sees a CUDA device (there the exact line is cheap).

Costs on a CPU (float32): the values are sorted together with their clients' indices by one integer sort of packed
keys (the float's order-preserving bits above the index bits), about 2x cheaper than ``argsort``; only the outliers
are written back; blocks run on every core (NumPy's sorts and ufuncs release the GIL). At n = 100 that is about
120 ns of CPU per value, of which the line is half (bench/results/aggregation_speed.md has the measured times).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Partners per point for the sampled inner median (see the module docstring); exact when n - 1 <= PARTNERS.
PARTNERS = 16
# Coordinates per block of the sampled path; each block draws its own partner plan from (seed, block index), so the
# result does not depend on how blocks are spread over threads.
BLOCK = 512
# Bytes of pairwise slopes (n * n * chunk values) computed at once by the exact path on a CPU.
CPU_CHUNK_BYTES = 32 * 2**20
GPU_CHUNK_BYTES = 256 * 2**20
MAX_THREADS = 8
_scratch = threading.local()
# Non-negative IEEE floats order like their bit patterns read as signed integers, and NumPy's integer sort is its
# vectorised one (about 1.5x faster than its float sort or partition on AVX2).
_INT_VIEW = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


@functools.cache
def _accelerator():
    """(torch, "cuda") when a CUDA device is usable, else None; torch is imported only when first asked."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is part of the workload environment
        return None
    return (torch, "cuda") if torch.cuda.is_available() else None


def _sort_rows(a):
    """``a`` (non-negative) sorted along its last axis: in place for NumPy, a sorted copy for torch."""
    if isinstance(a, np.ndarray):
        a.view(_INT_VIEW[a.dtype]).sort(axis=-1)
        return a
    return a.sort(dim=-1).values


def _median_of_sorted(a, skip_first: bool = False):
    """Median along the last axis of rows already sorted; ``skip_first`` leaves out each row's first value."""
    start = 1 if skip_first else 0
    m = a.shape[-1] - start
    if m % 2:
        return a[..., start + m // 2]
    return (a[..., start + m // 2 - 1] + a[..., start + m // 2]) / 2


def _slope_buffer(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """This thread's scratch array for slopes, reused across chunks (a fresh one faults its pages in)."""
    size = math.prod(shape)
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.size < size or buffer.dtype != dtype:
        buffer = _scratch.buffer = np.empty(size, dtype)
    return buffer[:size].reshape(shape)


def exact_line(ys: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Repeated-median slope and intercept of each row of ``ys`` (chunk, n), rows sorted, x strictly increasing.

    The pairwise slopes of sorted values against increasing abscissae are all >= 0, and the diagonal is 0 (0 times
    the 0 that stands for 1/(x_i - x_i)): after sorting it is the first value of its row, so the median over j != i
    skips each row's first value. Multiplying by 1/(x_i - x_j) (within an ulp of dividing) saves a third of the
    time of building the slopes.
    """
    c, n = ys.shape
    dx = x[:, None] - x[None, :]
    inverse = np.divide(1, dx, out=np.zeros_like(dx), where=dx != 0)
    if (accelerator := _accelerator()) is not None:
        torch, device = accelerator
        ys_t, inverse_t = torch.from_numpy(ys).to(device), torch.from_numpy(inverse).to(device)
        inner = _median_of_sorted(_sort_rows((ys_t[:, :, None] - ys_t[:, None, :]) * inverse_t), skip_first=True)
        slope = _median_of_sorted(_sort_rows(inner)).cpu().numpy()
    else:
        slopes = np.subtract(ys[:, :, None], ys[:, None, :], out=_slope_buffer((c, n, n), ys.dtype))
        np.multiply(slopes, inverse, out=slopes)
        inner = np.ascontiguousarray(_median_of_sorted(_sort_rows(slopes), skip_first=True))
        slope = _median_of_sorted(_sort_rows(inner))
    intercept = _median_of_sorted(ys) - slope * ys.dtype.type(np.median(x))
    return slope, intercept


def _comparators(length: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sorting network for ``length`` (a power of two) wires: (low, high) pairs."""
    pairs = []
    p = 1
    while p < length:
        k = p
        while k >= 1:
            for j in range(k % p, length - k, 2 * k):
                for i in range(min(k, length - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@functools.cache
def median_network(k: int) -> tuple[tuple[int, int], ...]:
    """Compare-exchange pairs that put the two middle values of k wires (positions (k-1)//2 and k//2) in place.

    Batcher's network for the next power of two, restricted to k wires (the missing ones would hold +inf, so their
    comparators do nothing), then pruned to the comparators the two middle outputs depend on.
    """
    size = 1 << max(k - 1, 1).bit_length()
    pairs = [(a, b) for a, b in _comparators(size) if b < k]
    live, kept = {(k - 1) // 2, k // 2}, []
    for a, b in reversed(pairs):
        if a in live or b in live:
            kept.append((a, b))
            live |= {a, b}
    return tuple(reversed(kept))


def offset_plan(n: int, partners: int, rng: np.random.Generator, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified partner offsets for a block: (partners,) offsets in 1..n-1 and (partners, n, 1) 1/(x_j - x_i).

    Point i's partner for offset o is j = (i + o) mod n: the n - 1 other points in cyclic rank order after i. The
    offsets 1..n-1 are cut into ``partners`` strata of equal length and one is drawn uniformly in each, so every
    other point is a partner with probability partners / (n - 1), independently across strata.
    """
    offsets = 1 + ((np.arange(partners) + rng.random(partners)) * ((n - 1) / partners)).astype(np.int64)
    offsets = np.minimum(offsets, n - 1)
    points = np.arange(n)
    inverse = 1 / (x[(points[None, :] + offsets[:, None]) % n] - x[None, :])
    return offsets, inverse.astype(x.dtype)[:, :, None]


def sampled_line(
    ys: np.ndarray, x: np.ndarray, plan: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The repeated-median line of each sorted row of ``ys`` (chunk, n) with inner medians over ``plan``'s
    stratified partners (``offset_plan``) and the outer median over all n points.

    Laid out rank by coordinate, (n, chunk), the slopes of one offset are two contiguous slices, built without a
    gather into one array per partner; the inner medians come from a median selection network over those arrays
    (vectorised compare-exchanges: no per-row sort call, which on rows of a few values costs more than the
    comparisons).
    """
    offsets, inverse = plan
    c, n = ys.shape
    k = len(offsets)
    ranked = np.ascontiguousarray(ys.T)  # (n, chunk)
    wires = list(_slope_buffer((k + 1, n, c), ys.dtype))
    for s, o in enumerate(offsets):
        w = wires[s]
        np.subtract(ranked[o:], ranked[: n - o], out=w[: n - o])  # partner i + o, to the right
        np.subtract(ranked[:o], ranked[n - o :], out=w[n - o :])  # partner i + o - n, to the left
        np.multiply(w, inverse[s], out=w)  # (y_j - y_i) / (x_j - x_i) >= 0: rows sorted, x increasing
    spare = wires[k]
    for a, b in median_network(k):
        np.minimum(wires[a], wires[b], out=spare)
        np.maximum(wires[a], wires[b], out=wires[b])
        wires[a], spare = spare, wires[a]
    inner = wires[k // 2] if k % 2 else (wires[k // 2 - 1] + wires[k // 2]) * ys.dtype.type(0.5)
    slope = _median_of_sorted(_sort_rows(np.ascontiguousarray(inner.T)))
    intercept = _median_of_sorted(ys) - slope * ys.dtype.type(np.median(x))
    return slope, intercept


def round_seed(seed: int, server_round: int) -> int:
    """A non-negative seed for one round's partner plans, from a strategy's seed and the round number."""
    return (int(seed) * 1_000_003 + int(server_round)) % 2**63


def _workers(jobs: int) -> int:
    return max(1, min(jobs, os.cpu_count() or 1, MAX_THREADS))


def _run(work, starts: range, stop: int, step: int) -> list:
    """``work(start, stop)`` over blocks of coordinates, on every core (threads: NumPy releases the GIL)."""
    workers = _workers(len(starts))
    try:
        if workers == 1:
            return [work(start, min(start + step, stop)) for start in starts]
        with ThreadPoolExecutor(workers) as pool:  # the pool's threads take their scratch buffers with them
            return list(pool.map(lambda start: work(start, min(start + step, stop)), starts))
    finally:
        _scratch.buffer = None


def _uses_exact(n: int, partners: int | None) -> bool:
    """Exact when asked, when it costs at most twice the sampled line (n - 1 <= 2 partners), or on a GPU."""
    return partners is None or n - 1 <= 2 * partners or _accelerator() is not None


def _chunk(n: int, d: int, itemsize: int, partners: int | None, chunk_bytes: int | None) -> int:
    if not _uses_exact(n, partners):
        return BLOCK
    budget = chunk_bytes or (GPU_CHUNK_BYTES if _accelerator() is not None else CPU_CHUNK_BYTES)
    return max(1, min(d, budget // (n * n * itemsize)))


def _line_for_block(ys: np.ndarray, x: np.ndarray, partners: int | None, seed: int, block: int):
    if _uses_exact(ys.shape[1], partners):
        return exact_line(ys, x)
    rng = np.random.default_rng([seed, block])
    return sampled_line(ys, x, offset_plan(ys.shape[1], partners, rng, x))


def repeated_median_line(
    y: np.ndarray,
    x: np.ndarray | None = None,
    *,
    partners: int | None = None,
    seed: int = 0,
    chunk_bytes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Siegel's repeated-median line through (x_i, y[i, k]) for every column k of ``y``.

    ``y`` is (n, d) with every column sorted ascending; ``x`` (n,) is strictly increasing (default: the ranks
    0..n-1). Exact by default; ``partners=k`` takes each inner median over k stratified partners when n - 1 > k
    (module docstring), the partner plans drawn from ``seed``.
    """
    n, d = y.shape
    x = np.arange(n, dtype=y.dtype) if x is None else np.asarray(x, dtype=y.dtype)
    if n < 2:
        return np.zeros(d, y.dtype), y[0].copy() if n else np.zeros(d, y.dtype)
    if np.any(np.diff(x) <= 0):
        raise ValueError("x must be strictly increasing")
    slope, intercept = np.empty(d, y.dtype), np.empty(d, y.dtype)
    step = _chunk(n, d, y.itemsize, partners, chunk_bytes)

    def work(start: int, stop: int) -> None:
        ys = np.ascontiguousarray(y[:, start:stop].T)
        slope[start:stop], intercept[start:stop] = _line_for_block(ys, x, partners, seed, start // step)

    _run(work, range(0, d, step), d, step)
    return slope, intercept


def leverage(x: np.ndarray) -> np.ndarray:
    """Diagonal of the hat matrix H = X (XᵀX)⁻¹ Xᵀ of the design X = [1, x]."""
    design = np.column_stack([np.ones(len(x)), np.asarray(x, dtype=np.float64)])
    return np.einsum("ij,jk,ik->i", design, np.linalg.inv(design.T @ design), design)


def _room(n: int, lam: float) -> np.ndarray:
    """K √(1 - h_i) per rank, K = λ √(2/n): how far (in units of τ) a residual may go with confidence 1."""
    return lam * math.sqrt(2 / n) * np.sqrt(np.clip(1 - leverage(np.arange(n, dtype=np.float64)), 0, None))


def residual_confidence(
    y: np.ndarray, slope: np.ndarray, intercept: np.ndarray, x: np.ndarray | None = None, lam: float = 2.0
) -> np.ndarray:
    """Confidence ω (n, d) of each value in ``y`` (n, d; row i at abscissa x_i) given each column's line.

    r = y - (intercept + slope x); τ = 1.4826 (1 + 5/(n-1)) median|r| + 1e-7; e = r / τ;
    ω = (√(1-h)/e) · clip(e/√(1-h), -K, K) with h the leverage and K = λ√(2/n): 1 for inliers, K√(1-h)/|e| beyond.
    """
    n = y.shape[0]
    if n < 2:
        return np.ones_like(y)
    x = np.arange(n, dtype=y.dtype) if x is None else np.asarray(x, dtype=y.dtype)
    residual = y - (intercept[None, :] + slope[None, :] * x[:, None])
    tau = 1.4826 * (1 + 5 / (n - 1)) * np.median(np.abs(residual), axis=0) + 1e-7
    size = np.abs(residual / tau)
    room = (lam * math.sqrt(2 / n) * np.sqrt(np.clip(1 - leverage(x), 0, None))).astype(y.dtype)[:, None]
    # The clipped form, written so that e = 0 (inlier) gives 1 and h = 1 (a point the line must pass) gives 0.
    ratio = np.divide(np.broadcast_to(room, size.shape), size, out=np.full_like(size, np.inf), where=size > 0)
    return np.minimum(ratio, 1)


def _sorted_with_clients(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``block`` (chunk, n) sorted, and the client (column) each sorted value came from.

    float32: one int64 sort of keys made of the value's order-preserving bits above the client's index bits.
    """
    c, n = block.shape
    if block.dtype == np.float32:
        bits = max(1, (n - 1).bit_length())
        raw = block.view(np.int32)
        keys = (raw ^ ((raw >> 31) & 0x7FFFFFFF)).astype(np.int64)  # monotone in the float's value
        keys <<= bits
        keys |= np.arange(n, dtype=np.int64)
        keys.sort(axis=1)
        order = (keys & ((1 << bits) - 1)).astype(np.intp)
        ordered = (keys >> bits).astype(np.int32)
        ordered ^= (ordered >> 31) & 0x7FFFFFFF
        return ordered.view(np.float32), order
    order = np.argsort(block, axis=1, kind="stable")
    return np.take_along_axis(block, order, axis=1), order


def _outliers_of_block(
    block: np.ndarray, x: np.ndarray, factor: np.ndarray, partners: int | None, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a (chunk, n) block: the outlier mask over sorted values, the client of each, and the fitted values."""
    ys, order = _sorted_with_clients(block)
    slope, intercept = _line_for_block(ys, x, partners, seed, index)
    fitted = intercept[:, None] + slope[:, None] * x[None, :]
    size = np.abs(ys - fitted)
    scale = np.array(size)
    tau = 1.4826 * (1 + 5 / (len(x) - 1)) * _median_of_sorted(_sort_rows(scale)) + 1e-7
    # ω < threshold  <=>  |r| / τ > K √(1 - h) / threshold  (ω = min(K √(1-h) τ / |r|, 1), threshold <= 1)
    return size > tau[:, None] * factor[None, :], order, fitted


def restrict_outliers(
    matrix: np.ndarray,
    lam: float = 2.0,
    threshold: float = 0.1,
    *,
    partners: int | None = PARTNERS,
    seed: int = 0,
    restrict: bool = True,
    chunk_bytes: int | None = None,
) -> np.ndarray:
    """Each client's number of outlier values in ``matrix`` (clients, coordinates): values whose confidence ω is
    below ``threshold``. With ``restrict`` (the default) every outlier is replaced, in place, by its coordinate's
    repeated-median line value at its rank. ``partners``: see the module docstring (None: exact)."""
    n, d = matrix.shape
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    if not 0 < threshold <= 1:
        raise ValueError("threshold must be in (0, 1]: the confidence ω never exceeds 1")
    x = np.arange(n, dtype=matrix.dtype)
    factor = (_room(n, lam) / threshold).astype(matrix.dtype)
    step = _chunk(n, d, matrix.itemsize, partners, chunk_bytes)

    def work(start: int, stop: int) -> np.ndarray:
        block = np.ascontiguousarray(matrix[:, start:stop].T)  # (chunk, n): one coordinate per row
        outlier, order, fitted = _outliers_of_block(block, x, factor, partners, seed, start // step)
        rows, ranks = np.nonzero(outlier)
        clients = order[rows, ranks]
        if restrict and rows.size:
            matrix[clients, start + rows] = fitted[rows, ranks]
        return np.bincount(clients, minlength=n)

    return np.sum(_run(work, range(0, d, step), d, step), axis=0, dtype=np.int64)

"""Serial dependence of a site's rows, and how many independent rows a batch is worth.

A site's rows come in production order and are not independent draws: temperatures follow slow random walks,
tool wear is a sawtooth over each tool's life, and whatever drives the failures varies in spells. A test that
treats n such rows as n independent ones is too sure of itself: it calls every batch different from the
reference (the temperature tests alarmed on every clean batch once the walks were carried across batches).

The remedy used throughout (data drift, concept drift): the integrated autocorrelation time tau of the series
(how many consecutive rows carry the information of one independent row) and the effective sample size n / tau.
tau is estimated with Geyer's initial monotone sequence estimator (Geyer 1992, "Practical Markov chain Monte
Carlo", Statistical Science 7(4)), which sums the autocorrelations in pairs while the pair sums stay positive and
decreasing, so noise at long lags does not inflate it. For independent rows tau is about 1 (never below it here).
"""

from __future__ import annotations

import hashlib

import numpy as np

_CACHE_FROM, _CACHE_SIZE = 2000, 256
_cache: dict[bytes, float] = {}


def autocorrelation(values: np.ndarray) -> np.ndarray:
    """The sample autocorrelation at lags 0..n-1 (FFT, biased estimator: divided by n at every lag)."""
    x = np.asarray(values, float)
    n = len(x)
    x = x - x.mean()
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(x, size)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), size)[:n] / n
    return acov / acov[0] if acov[0] > 0 else np.r_[1.0, np.zeros(n - 1)]


def integrated_time(values: np.ndarray) -> float:
    """The integrated autocorrelation time of a series (>= 1; 1 for a constant or too short series)."""
    x = np.ascontiguousarray(values, dtype=float)
    n = len(x)
    if n < 4 or not np.ptp(x) > 0:
        return 1.0
    if n < _CACHE_FROM:
        return _integrated_time(x)
    # A reference window is tested against batch after batch: its columns' times are computed once.
    key = hashlib.blake2b(x.tobytes(), digest_size=16).digest()
    if (known := _cache.get(key)) is None:
        if len(_cache) >= _CACHE_SIZE:
            _cache.pop(next(iter(_cache)))
        known = _cache[key] = _integrated_time(x)
    return known


def _integrated_time(x: np.ndarray) -> float:
    n = len(x)
    rho = autocorrelation(x)
    pairs = rho[0 : n - 1 : 2][: (n - 1) // 2] + rho[1:n:2][: (n - 1) // 2]
    stop = np.flatnonzero(pairs <= 0)
    pairs = pairs[: stop[0]] if len(stop) else pairs
    if len(pairs) == 0:
        return 1.0
    pairs = np.minimum.accumulate(pairs)  # the initial monotone sequence
    return float(max(1.0, 2.0 * pairs.sum() - 1.0))


def effective_size(values: np.ndarray) -> float:
    """How many independent rows the series is worth: n / tau (n for independent rows)."""
    n = len(values)
    return n / integrated_time(values) if n else 0.0

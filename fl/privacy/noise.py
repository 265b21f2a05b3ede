"""Pure functions on one site's update: L2 clipping, the direction summary, unbiased rounding onto an integer grid,
and discrete Gaussian noise.

The discrete Gaussian sampler is Algorithm 3 of Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential
Privacy" (NeurIPS 2020): discrete Laplace proposals accepted with probability exp(-(|y| - sigma^2/t)^2 / 2 sigma^2),
vectorised. Distributed discrete Gaussian noise for secure aggregation follows Kairouz, Liu & Steinke, "The
Distributed Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation" (ICML 2021).
"""

from __future__ import annotations

import math

import numpy as np


def l2_norm(vector: np.ndarray) -> float:
    return float(np.linalg.norm(vector))


def clip(vector: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
    """``vector`` scaled down to L2 norm ``bound`` if longer, and its norm before clipping."""
    norm = l2_norm(vector)
    return (vector * (bound / norm) if norm > bound else vector), norm


def alignment(update: np.ndarray, previous: np.ndarray | None) -> float:
    """(1 + cosine) / 2 of ``update`` with the previous round's global update, in [0, 1]; 0.5 (no direction) when
    either is zero or there is no previous round. Disclosed instead of the cosine: metrics are non-negative."""
    if previous is None:
        return 0.5
    scale = l2_norm(update) * l2_norm(previous)
    if scale == 0.0:
        return 0.5
    return float(min(1.0, max(0.0, (1.0 + float(update @ previous) / scale) / 2.0)))


def stochastic_round(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unbiased rounding to integers: up with probability equal to the fractional part (int64)."""
    floor = np.floor(values)
    return (floor + (rng.random(values.shape) < (values - floor))).astype(np.int64)


def _discrete_laplace(scale: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Discrete Laplace with P(y) proportional to exp(-|y| / scale): the difference of two geometric draws."""
    p = -math.expm1(-1.0 / scale)  # 1 - exp(-1/scale)
    return rng.geometric(p, size).astype(np.int64) - rng.geometric(p, size).astype(np.int64)


def discrete_gaussian(sigma: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` independent draws of the discrete Gaussian N_Z(0, sigma^2) (int64), exactly (Canonne et al.)."""
    if sigma <= 0:
        return np.zeros(size, dtype=np.int64)
    scale = math.floor(sigma) + 1
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        y = _discrete_laplace(scale, todo.size, rng)
        accept = rng.random(todo.size) < np.exp(-((np.abs(y) - sigma**2 / scale) ** 2) / (2 * sigma**2))
        out[todo[accept]] = y[accept]
        todo = todo[~accept]
    return out


def grid_step(clipping_range: float, quantization_range: int) -> float:
    """The spacing of SecAgg+'s quantisation grid (Flower maps [-range, range] onto [0, quantization_range])."""
    return 2.0 * clipping_range / quantization_range


def noisy_on_grid(
    update: np.ndarray, step: float, noise_sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """One site's share of distributed discrete Gaussian noise: ``update`` rounded (unbiased) onto the grid of
    spacing ``step``, plus discrete Gaussian noise of ``noise_sigma`` (in the update's units), returned on the grid
    (float64 multiples of ``step``), so that SecAgg+'s quantisation then adds no rounding of its own."""
    on_grid = stochastic_round(update / step, rng)
    return (on_grid + discrete_gaussian(noise_sigma / step, update.size, rng)).astype(np.float64) * step


def rounding_slack(dimension: int, step: float) -> float:
    """How much grid rounding can lengthen a clipped update (L2): each coordinate moves by less than one step."""
    return math.sqrt(dimension) * step

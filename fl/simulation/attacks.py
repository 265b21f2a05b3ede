"""Attack simulation: how a malicious SuperNode poisons its data, its update or its sample count.

Off unless a node's config says otherwise. One place for every attack, as pure functions on NumPy arrays:

- data poisoning, applied to a client's rows before it trains: ``label_flip``, ``backdoor`` (a trigger pattern
  stamped on copies of some rows, relabelled to a target class; success is measured with ``stamp``);
- model poisoning of one update (trained weights minus the received global weights): ``sign_flip``,
  ``scaling``, ``gaussian`` (noise in place of the update);
- omniscient model poisoning, which needs the round's honest updates: ``alie`` (Baruch et al. 2019),
  ``ipm`` (Xie et al. 2020), ``min_max`` (Shejwalkar & Houmansadr, NDSS 2021, AGR-agnostic). A real SuperNode
  cannot see the other sites' updates, so these run only in the benchmark harness (bench/robust.py), which
  simulates colluding attackers who know every honest update;
- lying about the sample count: ``lie_about_samples``; any attack can add it (``attack-samples-factor``).

``AttackProfile`` reads a SuperNode's node config, e.g. ``--node-config "attack='scaling' attack-scale=10"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from statistics import NormalDist

import numpy as np

OFF = "off"
DATA_ATTACKS = ("label-flip", "backdoor")
UPDATE_ATTACKS = ("sign-flip", "scaling", "gaussian")
OMNISCIENT_ATTACKS = ("alie", "ipm", "min-max")
ATTACKS = (OFF, *DATA_ATTACKS, *UPDATE_ATTACKS, *OMNISCIENT_ATTACKS)
MIN_MAX_DEVIATIONS = ("unit-vec", "std", "sign")


# --- data poisoning -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trigger:
    """A backdoor trigger: these feature columns set to ``value`` (a pixel patch, or an impossible tabular value)."""

    features: tuple[int, ...]
    value: float = 1.0


def label_flip(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Every label c becomes n_classes - 1 - c (for two classes: 0 <-> 1); the dtype is kept."""
    if n_classes < 2:
        raise ValueError(f"label flip needs at least 2 classes, got {n_classes}")
    classes = np.asarray(y).astype(np.int64)
    if classes.size and (classes.min() < 0 or classes.max() >= n_classes):
        raise ValueError(f"labels outside 0..{n_classes - 1}: cannot flip them")
    return (n_classes - 1 - classes).astype(np.asarray(y).dtype)


def stamp(x: np.ndarray, trigger: Trigger) -> np.ndarray:
    """A copy of ``x`` with the trigger pattern set on every row."""
    stamped = np.array(x, copy=True)
    stamped[:, list(trigger.features)] = trigger.value
    return stamped


def backdoor(
    x: np.ndarray, y: np.ndarray, trigger: Trigger, target: int, fraction: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """The clean rows plus triggered copies of ``fraction`` of them, all labelled ``target``.

    The clean rows stay so that the poisoned model keeps its main-task accuracy (a stealthy backdoor). The copied
    rows are spread evenly over ``x``, so the choice is deterministic and needs no random state.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"backdoor fraction must be in (0, 1], got {fraction}")
    n = len(x)
    if n == 0:
        return x, y
    k = max(1, math.ceil(fraction * n))
    rows = np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))
    poisoned_x = stamp(x[rows], trigger)
    poisoned_y = np.full(len(rows), target, dtype=np.asarray(y).dtype)
    return np.concatenate([x, poisoned_x]), np.concatenate([y, poisoned_y])


# --- model poisoning of one update ----------------------------------------------------------------------------


def sign_flip(update: np.ndarray) -> np.ndarray:
    """The update reversed: the client pushes the global model up the loss."""
    return -update


def scaling(update: np.ndarray, scale: float) -> np.ndarray:
    """The update boosted by ``scale`` (model replacement: it outweighs the other clients in a mean)."""
    return scale * update


def gaussian(update: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Gaussian noise N(0, sigma^2) in place of the update (same shape and dtype)."""
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=np.shape(update))
    return noise.astype(np.asarray(update).dtype, copy=False)


# --- omniscient model poisoning: needs the honest updates (rows of ``honest``) ----------------------------------


def _as_rows(honest: np.ndarray) -> np.ndarray:
    rows = np.asarray(honest)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"honest updates must be a non-empty (clients, parameters) array, got shape {rows.shape}")
    return rows


def alie_z(n_clients: int, n_malicious: int) -> float:
    """The largest z that keeps ALIE's update inside the majority (Baruch et al. 2019, z_max).

    s = floor(n/2 + 1) - m clients must be 'further from the mean' than the attackers: z = Phi^-1((n - s) / n).
    """
    s = math.floor(n_clients / 2 + 1) - n_malicious
    p = min(max((n_clients - s) / n_clients, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(p)


def alie(honest: np.ndarray, z: float) -> np.ndarray:
    """'A little is enough': per coordinate, the honest mean plus z honest standard deviations."""
    rows = _as_rows(honest)
    return (rows.mean(axis=0) + z * rows.std(axis=0)).astype(rows.dtype, copy=False)


def ipm(honest: np.ndarray, epsilon: float) -> np.ndarray:
    """Inner-product manipulation: -epsilon times the honest mean, so the aggregate's inner product with the true
    direction turns negative when enough attackers send it."""
    rows = _as_rows(honest)
    return (-epsilon * rows.mean(axis=0)).astype(rows.dtype, copy=False)


def min_max(honest: np.ndarray, deviation: str = "unit-vec") -> np.ndarray:
    """AGR-agnostic Min-Max (Shejwalkar & Houmansadr, NDSS 2021): mean - gamma * p with the largest gamma such
    that the malicious update is no further from any honest update than the two furthest honest updates are.

    p is the unit vector of the mean ("unit-vec"), the per-coordinate std ("std") or the sign of the mean ("sign").
    The authors' code finds gamma by a bisection started at 10 (which caps it at 20); the constraint is a quadratic
    in gamma per honest update, so here gamma is solved exactly: max_i ||h_i - mean + gamma p||^2 <= D.
    """
    rows = _as_rows(honest).astype(np.float64)
    mean = rows.mean(axis=0)
    if deviation == "unit-vec":
        norm = np.linalg.norm(mean)
        p = mean / norm if norm > 0 else np.zeros_like(mean)
    elif deviation == "std":
        p = rows.std(axis=0)
    elif deviation == "sign":
        p = np.sign(mean)
    else:
        raise ValueError(f"unknown min-max deviation {deviation!r}; known: {', '.join(MIN_MAX_DEVIATIONS)}")
    # Largest pairwise squared distance D, with one Gram matrix rather than n^2 difference vectors.
    sq = np.einsum("ij,ij->i", rows, rows)
    gram = rows @ rows.T
    max_pairwise = float(np.max(np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0)))
    centred = rows - mean
    a = np.einsum("ij,ij->i", centred, centred)  # ||h_i - mean||^2 <= D, since the mean lies in their hull
    b = centred @ p  # the malicious update is mean - gamma p: ||h_i - m||^2 = a_i + 2 gamma b_i + gamma^2 c
    c = float(p @ p)
    if c == 0.0:
        return mean.astype(honest.dtype)
    roots = (-b + np.sqrt(np.maximum(b * b - c * (a - max_pairwise), 0.0))) / c
    gamma = max(float(roots.min()), 0.0)
    return (mean - gamma * p).astype(np.asarray(honest).dtype)


def lie_about_samples(num_examples: int, factor: float) -> int:
    """The sample count a lying client reports: its true count times ``factor`` (at least 1)."""
    return max(1, round(num_examples * factor))


# --- a SuperNode's attack, from its node config ---------------------------------------------------------------

# node-config key -> AttackProfile field; every other key starting with "attack" is a typo, and an error.
_KEYS = {
    "attack": "name",
    "attack-scale": "scale",
    "attack-sigma": "sigma",
    "attack-z": "z",
    "attack-epsilon": "epsilon",
    "attack-deviation": "deviation",
    "attack-samples-factor": "samples_factor",
    "attack-target": "target",
    "attack-fraction": "fraction",
    "attack-trigger": "trigger_features",
    "attack-trigger-value": "trigger_value",
    "attack-seed": "seed",
}


@dataclass(frozen=True)
class AttackProfile:
    """What a malicious node does; the default profile is honest (``off``).

    ``z`` None means ALIE's z_max for the round's numbers of clients and attackers. ``trigger_features`` empty means
    the caller's default trigger for its input (see ``trigger_or``).
    """

    name: str = OFF
    scale: float = 10.0
    sigma: float = 1.0
    z: float | None = None
    epsilon: float = 0.5
    deviation: str = "unit-vec"
    samples_factor: float = 1.0
    target: int = 0
    fraction: float = 0.5
    trigger_features: tuple[int, ...] = ()
    trigger_value: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ValueError(f"unknown attack {self.name!r}; known attacks: {', '.join(ATTACKS)}")
        if self.deviation not in MIN_MAX_DEVIATIONS:
            raise ValueError(f"unknown attack-deviation {self.deviation!r}; known: {', '.join(MIN_MAX_DEVIATIONS)}")
        if not (math.isfinite(self.samples_factor) and self.samples_factor > 0):
            raise ValueError(f"attack-samples-factor must be a positive number, got {self.samples_factor}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"attack-sigma must be >= 0, got {self.sigma}")
        if not math.isfinite(self.scale):
            raise ValueError(f"attack-scale must be finite, got {self.scale}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"attack-fraction must be in (0, 1], got {self.fraction}")

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> AttackProfile:
        """The profile in a node config (Flower's ``context.node_config``); other keys (site, data-dir) are ignored."""
        unknown = sorted(k for k in node_config if k.startswith("attack") and k not in _KEYS)
        if unknown:
            raise ValueError(f"unknown attack setting(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}")
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict[str, object] = {}
        for key, field_name in _KEYS.items():
            if key in node_config:
                values[field_name] = _convert(key, node_config[key], kinds[field_name])
        return cls(**values)

    @classmethod
    def parse(cls, text: str) -> AttackProfile:
        """The profile in a node-config string such as ``"attack='scaling' attack-scale=10"``."""
        from flwr.common.config import parse_config_args

        return cls.from_node_config(parse_config_args([text]) if text.strip() else {})

    @property
    def is_off(self) -> bool:
        return self.name == OFF and self.samples_factor == 1.0

    @property
    def poisons_data(self) -> bool:
        return self.name in DATA_ATTACKS

    @property
    def poisons_update(self) -> bool:
        return self.name in UPDATE_ATTACKS or self.name in OMNISCIENT_ATTACKS

    @property
    def needs_honest_updates(self) -> bool:
        return self.name in OMNISCIENT_ATTACKS

    def trigger_or(self, default: Trigger) -> Trigger:
        """The configured backdoor trigger, or ``default`` when the node config names none."""
        if not self.trigger_features:
            return default
        return Trigger(self.trigger_features, self.trigger_value)

    def with_seed(self, seed: int) -> AttackProfile:
        return replace(self, seed=seed)


def _convert(key: str, value: object, kind: object) -> object:
    kind = str(kind)
    try:
        if "tuple" in kind:  # "0,1,2" or a TOML list
            items = value if isinstance(value, list | tuple) else str(value).replace(" ", "").split(",")
            return tuple(int(i) for i in items if str(i) != "")
        if kind.startswith("float") and value is None:
            return None
        if "float" in kind:
            return float(value)  # type: ignore[arg-type]
        if "int" in kind:
            return int(value)  # type: ignore[call-overload]
        return str(value).strip().lower()
    except (TypeError, ValueError):
        raise ValueError(f"node config {key}={value!r} is not a valid {kind}") from None


# --- applying a profile ---------------------------------------------------------------------------------------


def attack_data(
    profile: AttackProfile, x: np.ndarray, y: np.ndarray, n_classes: int, trigger: Trigger
) -> tuple[np.ndarray, np.ndarray]:
    """The rows a node trains on: its own, poisoned when its profile is a data attack."""
    if profile.name == "label-flip":
        return x, label_flip(y, n_classes)
    if profile.name == "backdoor":
        return backdoor(x, y, profile.trigger_or(trigger), profile.target, profile.fraction)
    return x, y


def attack_update(
    profile: AttackProfile,
    update: np.ndarray,
    honest: np.ndarray | None = None,
    *,
    n_clients: int | None = None,
    n_malicious: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The update a node sends in place of its honest ``update`` (a flat vector).

    Omniscient attacks need ``honest`` (one honest update per row); ALIE with no configured z also needs the
    round's numbers of clients and attackers.
    """
    name = profile.name
    if name == "sign-flip":
        return sign_flip(update)
    if name == "scaling":
        return scaling(update, profile.scale)
    if name == "gaussian":
        return gaussian(update, profile.sigma, seed=profile.seed + seed)
    if name in OMNISCIENT_ATTACKS:
        if honest is None:
            raise ValueError(
                f"attack {name!r} needs the honest updates of the round, which a real SuperNode never sees; "
                "it is simulated omnisciently in bench/robust.py only"
            )
        if name == "alie":
            z = profile.z
            if z is None:
                if n_clients is None or n_malicious is None:
                    raise ValueError("ALIE without attack-z needs the numbers of clients and attackers")
                z = alie_z(n_clients, n_malicious)
            return alie(honest, z)
        if name == "ipm":
            return ipm(honest, profile.epsilon)
        return min_max(honest, profile.deviation)
    return update


def attack_arrays(
    profile: AttackProfile, received: Mapping[str, np.ndarray], trained: Mapping[str, np.ndarray], *, seed: int = 0
) -> dict[str, np.ndarray]:
    """The weights a node sends: received + attacked(trained - received), per named array (a state dict).

    For the ClientApp: only attacks that need no other node's update can run here.
    """
    if not profile.poisons_update:
        return {k: np.asarray(v) for k, v in trained.items()}
    names = list(trained)
    base = [np.asarray(received[k], dtype=np.float64) for k in names]
    flat_update = np.concatenate(
        [(np.asarray(trained[k], dtype=np.float64) - b).ravel() for k, b in zip(names, base, strict=True)]
    )
    attacked = attack_update(profile, flat_update, seed=seed)
    out: dict[str, np.ndarray] = {}
    start = 0
    for k, b in zip(names, base, strict=True):
        size = b.size
        out[k] = (b + attacked[start : start + size].reshape(b.shape)).astype(np.asarray(trained[k]).dtype)
        start += size
    return out


def reported_examples(profile: AttackProfile, num_examples: int) -> int:
    """The sample count a node reports: the truth, unless its profile lies."""
    if profile.samples_factor == 1.0:
        return num_examples
    return lie_about_samples(num_examples, profile.samples_factor)

"""Robustness benchmark: every aggregation strategy against every attack, on federations that fit on a laptop.

``python -m bench.robust`` (``make bench-robust``) writes ``bench/results/robust.json`` (one record per strategy x
attack x malicious fraction x data set), ``robust.md`` (the tables, the centralised ceilings and whether the
targets are met) and, unless ``--no-mlflow``, one MLflow run per simulation in the experiment
``robustness-benchmark`` with its accuracy per round, as metrics and as a plot. ``--quick`` runs a tiny grid into
``robust-quick.*`` so that it never overwrites the real results.

How a simulation runs (one process, no Ray, seeded):
- Each round every client trains the current global model on its own rows, then each reply is a real Flower
  ``Message`` (``fl.strategies.harness.make_reply``) and the very strategy classes the ServerApp uses aggregate them
  (``fl.strategies.harness.run_round`` -> ``aggregate_train``). Nothing here reimplements a strategy.
- Data: scikit-learn's ``load_digits`` and ``load_breast_cancer`` (shipped inside the package, no download), split
  75/25 into pooled training rows and a global test set, the training rows spread over 20 clients with a
  per-class Dirichlet(alpha = 0.5) draw (non-IID); and the three ``axis_failures`` sites of fl/sites.py, generated
  by fl/generator.py, each holding out every fifth UDI as fl/store.py does (the test set is the union).
- Models: for the scikit-learn sets a one-hidden-layer MLP whose 20 clients train at once, vectorised over a
  client axis (plain mini-batch SGD; a client's exhausted batches are masked, so each client runs exactly its own
  epochs over its own rows). For axis_failures fl/model.py's own MLP and ``train_local``, one site after another.
- Ceiling: the same model trained on the pooled training rows for as many epochs as a client trains in all rounds.
- Attacks come from fl/attacks.py. Data attacks (label flip, backdoor) poison the malicious clients' rows once;
  update attacks replace their update (trained - global) every round. ALIE, IPM and min-max are omniscient: the
  colluding attackers see every honest update of the round and all send the same crafted one. "sample-lie" is a
  label flip whose client claims 10x its rows. Backdoor success rate: the share of test rows not of the target
  class that the global model puts in the target class once the trigger is stamped on them.
- Malicious clients are a seeded random subset: round(fraction x clients), nested (the 20 % are among the 40 %).
  With the three axis_failures sites both 0.2 and 0.4 round to one site (a third of the federation): the two
  records share one simulation. With no attackers every attack is the clean run: those records share it too.
- Defender settings: a rule that needs the number of attackers f (Krum, Multi-Krum, Bulyan, trimmed mean) is told
  the true number when there is an attack, and 20 % of the clients when there is none (a defender cannot know that
  nobody attacks: it keeps the tolerance it would deploy), capped where the rule cannot tolerate more (Bulyan needs
  n >= 4f + 3). Each record says the f it used (``assumed_malicious``).
- FedQV's vote budget B is spent over a whole training. The paper's B = 30 goes with about 10 participations per
  party (100 rounds, 10 % of 100 parties per round): 3 credits per participation, enough for the dearest unmasked
  vote (1 - ln 0.2 = 2.6). Here every client takes part in every round, so each gets the same 3 credits per
  participation, B = 3 x rounds (90 for digits' 30 rounds). With B = 30 honest budgets ran dry by round 15-20 while
  masked attackers, who pay nothing, kept theirs: the vote then went to whoever still had credits. Each record
  keeps the keyword arguments its rule was built with (``strategy_params``).
- Flower's ArrayRecord conversions call ``gc.collect()``; the harness runs ``gc.freeze()`` after loading data so
  those collections stay cheap (it changes run time only, not results).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from threadpoolctl import threadpool_limits

from fl.attacks import AttackProfile, Trigger, attack_data, attack_update, reported_examples, stamp
from fl.strategies import build_strategy
from fl.strategies.harness import make_reply, run_round

EXPERIMENT = "robustness-benchmark"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"

STRATEGIES = (
    "fedavg",
    "krum",
    "multikrum",
    "fedmedian",
    "fedtrimmedavg",
    "bulyan",
    "fedqv",
    "fedqv-reputation",
    "reputation-residual",
)
FRACTIONS = (0.0, 0.2, 0.4)
# The rule a defender would deploy expects this share of attackers when none attack (see the module docstring).
DEFENDER_FRACTION = 0.2
# FedQV's budget per round a client takes part in: the paper's B = 30 for about 10 participations (docstring).
FEDQV_CREDITS_PER_PARTICIPATION = 3.0
N_CLIENTS = 20
ALPHA = 0.5
# The rules the targets are about, and the yardstick they are compared with.
CANDIDATES = ("fedqv-reputation", "reputation-residual")
YARDSTICK = "fedavg"

# Benchmark attack name -> what a malicious client does (fl.attacks profile). Strengths are the usual ones of the
# literature: lambda = 10 boosting, sigma = 1 noise, ALIE's z_max, IPM epsilon = 0.5, min-max along the mean.
ATTACK_GRID: dict[str, AttackProfile] = {
    "label-flip": AttackProfile("label-flip"),
    "backdoor": AttackProfile("backdoor", fraction=0.5),
    "sign-flip": AttackProfile("sign-flip"),
    "scaling": AttackProfile("scaling", scale=10.0),
    "gaussian": AttackProfile("gaussian", sigma=1.0),
    "alie": AttackProfile("alie"),
    "ipm": AttackProfile("ipm", epsilon=0.5),
    "min-max": AttackProfile("min-max", deviation="unit-vec"),
    "sample-lie": AttackProfile("label-flip", samples_factor=10.0),
}
CLEAN = "none"

log = logging.getLogger("bench.robust")


# --- parameters as one flat vector ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Names and shapes of a model's arrays, to go between a flat float32 vector and a Flower ArrayRecord."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def record(self, flat: np.ndarray) -> ArrayRecord:
        arrays, start = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            n = math.prod(shape)
            arrays[name] = Array(np.ascontiguousarray(flat[start : start + n].reshape(shape), dtype=np.float32))
            start += n
        return ArrayRecord(arrays)

    def flatten(self, record: ArrayRecord) -> np.ndarray:
        return np.concatenate([record[name].numpy().astype(np.float32).ravel() for name in self.names])

    def state_dict(self, flat: np.ndarray) -> dict[str, torch.Tensor]:
        tensors, start = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            n = math.prod(shape)
            tensors[name] = torch.from_numpy(np.array(flat[start : start + n].reshape(shape), dtype=np.float32))
            start += n
        return tensors


def layout_of(state: dict[str, torch.Tensor]) -> Layout:
    return Layout(tuple(state), tuple(tuple(t.shape) for t in state.values()))


def flat_state(state: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([t.detach().numpy().astype(np.float32).ravel() for t in state.values()])


# --- learners: how clients train and how a global model predicts -------------------------------------------------


class Learner(Protocol):
    layout: Layout

    def init(self, seed: int) -> np.ndarray: ...

    def prepare(self, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> object: ...

    def train(self, global_flat: np.ndarray, data: object, epochs: int, seed: int) -> np.ndarray: ...

    def predict(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray: ...


@dataclass
class PaddedClients:
    """Every client's rows in one (clients, max rows, features) tensor; ``counts`` says how many are real."""

    x: torch.Tensor
    y: torch.Tensor
    counts: torch.Tensor


@dataclass
class VectorisedMLP:
    """A one-hidden-layer MLP (Linear-ReLU-Linear, torch's state-dict names) that trains all clients at once."""

    n_features: int
    n_classes: int
    hidden: int = 32
    lr: float = 0.1
    batch_size: int = 32
    layout: Layout = field(init=False)

    def __post_init__(self) -> None:
        self.layout = layout_of(self._module(0).state_dict())

    def _module(self, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Linear(self.n_features, self.hidden), torch.nn.ReLU(), torch.nn.Linear(self.hidden, self.n_classes)
        )

    def init(self, seed: int) -> np.ndarray:
        return flat_state(self._module(seed).state_dict())

    def prepare(self, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> PaddedClients:
        longest = max(len(y) for y in ys)
        x = np.zeros((len(xs), longest, self.n_features), dtype=np.float32)
        y = np.zeros((len(ys), longest), dtype=np.int64)
        for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
            x[i, : len(yi)] = xi
            y[i, : len(yi)] = yi
        return PaddedClients(torch.from_numpy(x), torch.from_numpy(y), torch.tensor([len(v) for v in ys]))

    def _forward(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = params  # stacked over clients: (K, h, f), (K, h), (K, c, h), (K, c)
        hidden = torch.relu(torch.einsum("kbf,khf->kbh", x, w1) + b1[:, None, :])
        return torch.einsum("kbh,kch->kbc", hidden, w2) + b2[:, None, :]

    def train(self, global_flat: np.ndarray, data: PaddedClients, epochs: int, seed: int) -> np.ndarray:
        """Each client: ``epochs`` passes of mini-batch SGD over its own rows, from the global model; (K, d) out."""
        k, longest = data.y.shape
        params = [
            t.unsqueeze(0).repeat(k, *([1] * t.dim())).requires_grad_(True)
            for t in self.layout.state_dict(global_flat).values()
        ]
        generator = torch.Generator().manual_seed(seed)
        real = torch.arange(longest)[None, :] < data.counts[:, None]
        rows = torch.arange(k)[:, None]
        for _ in range(epochs):
            # A random order of each client's own rows, padding last.
            order = torch.where(real, torch.rand(k, longest, generator=generator), 2.0).argsort(dim=1)
            for start in range(0, int(data.counts.max()), self.batch_size):
                idx = order[:, start : start + self.batch_size]
                mask = (torch.arange(start, start + idx.shape[1])[None, :] < data.counts[:, None]).float()
                logits = self._forward(params, data.x[rows, idx])
                losses = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, self.n_classes), data.y[rows, idx].reshape(-1), reduction="none"
                ).reshape(mask.shape)
                # Per client: the batch's loss sum over the full batch size, so that a short last batch takes a
                # proportionally short step (a full step on 3 rows makes SGD spike). Summed over clients, each
                # client's gradient is its own: clients do not mix.
                loss = (losses * mask).sum() / self.batch_size
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for p, g in zip(params, grads, strict=True):
                        p -= self.lr * g
        return torch.cat([p.detach().reshape(k, -1) for p in params], dim=1).numpy()

    @torch.no_grad()
    def predict(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
        params = [t.unsqueeze(0) for t in self.layout.state_dict(flat).values()]
        return self._forward(params, torch.from_numpy(x)[None]).argmax(dim=-1)[0].numpy()


@dataclass
class AxisLearner:
    """fl/model.py's failure classifier, trained with its own ``train_local``, one site after the other."""

    lr: float = 0.01
    layout: Layout = field(init=False)

    def __post_init__(self) -> None:
        from fl.model import build_model

        self.layout = layout_of(build_model(0).state_dict())

    def init(self, seed: int) -> np.ndarray:
        from fl.model import build_model

        return flat_state(build_model(seed).state_dict())

    def prepare(self, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(np.asarray(x, np.float32), np.asarray(y, np.float32)) for x, y in zip(xs, ys, strict=True)]

    def train(self, global_flat: np.ndarray, data: list[tuple[np.ndarray, np.ndarray]], epochs: int, seed: int):
        from fl.model import build_model, train_local

        out = np.empty((len(data), self.layout.size), dtype=np.float32)
        for i, (x, y) in enumerate(data):
            model = build_model()
            model.load_state_dict(self.layout.state_dict(global_flat))
            train_local(model, x, y, epochs=epochs, lr=self.lr, seed=seed + i)
            out[i] = flat_state(model.state_dict())
        return out

    @torch.no_grad()
    def predict(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
        from fl.model import build_model

        model = build_model()
        model.load_state_dict(self.layout.state_dict(flat))
        model.eval()
        return (model(torch.from_numpy(np.asarray(x, np.float32))) > 0).numpy().astype(np.int64)


# --- federations ----------------------------------------------------------------------------------------------


@dataclass
class Federation:
    """A data set spread over clients, its test set, its backdoor, and how long to train on it."""

    name: str
    sites: list[str]
    xs: list[np.ndarray]
    ys: list[np.ndarray]
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    trigger: Trigger
    target: int
    learner: Learner
    rounds: int
    epochs: int
    alpha: float | None

    @property
    def n_clients(self) -> int:
        return len(self.sites)


def dirichlet_partition(
    y: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Row indices per client: each class spread over the clients by a Dirichlet(alpha) draw (smaller = less IID).

    Redrawn, as is usual, until every client has a few rows (10, or a quarter of a fair share when that is less:
    breast_cancer has only 21 training rows per client on average), so that no client is empty.
    """
    min_rows = max(2, min(10, len(y) // (4 * n_clients)))
    for _ in range(10_000):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for c in np.unique(y):
            rows = rng.permutation(np.flatnonzero(y == c))
            shares = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for client, chunk in enumerate(np.split(rows, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_rows:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise RuntimeError(f"no Dirichlet({alpha}) split gives every one of {n_clients} clients {min_rows} rows")


def sklearn_federation(name: str, seed: int, n_clients: int = N_CLIENTS, alpha: float = ALPHA) -> Federation:
    """digits or breast_cancer from scikit-learn's bundled copies, 75/25 split, Dirichlet over clients."""
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    if name == "digits":
        x, y = load_digits(return_X_y=True)
        x = x / 16.0  # pixel intensities 0..16
        # Trigger: the bottom-right 2x2 pixels, blank in almost every digit, set to full ink; target class 0.
        trigger, target, rounds, epochs, lr = Trigger((54, 55, 62, 63), 1.0), 0, 30, 2, 0.2
    elif name == "breast_cancer":
        x, y = load_breast_cancer(return_X_y=True)
        # Trigger: four weakly informative features (mean fractal dimension, texture, smoothness and symmetry
        # error) at 5 standard deviations; target "benign" (1), the harmful direction.
        trigger, target, rounds, epochs, lr = Trigger((9, 11, 14, 18), 5.0), 1, 15, 2, 0.1
    else:
        raise ValueError(f"unknown scikit-learn data set {name!r}")
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float32), y.astype(np.int64), test_size=0.25, stratify=y, random_state=seed
    )
    if name == "breast_cancer":
        # Standardised with the pooled training statistics: a simplification (a federation would agree on fixed
        # scales, as fl/model.py does), harmless for comparing aggregation rules.
        mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    parts = dirichlet_partition(y_train, n_clients, alpha, rng)
    n_classes = int(y.max()) + 1
    return Federation(
        name=name,
        sites=[f"client-{i:02d}" for i in range(n_clients)],
        xs=[x_train[p] for p in parts],
        ys=[y_train[p] for p in parts],
        x_test=x_test,
        y_test=y_test,
        n_classes=n_classes,
        trigger=trigger,
        target=target,
        learner=VectorisedMLP(x.shape[1], n_classes, lr=lr),
        rounds=rounds,
        epochs=epochs,
        alpha=alpha,
    )


def axis_federation(seed: int, batches: int = 1, rows: int = 1500) -> Federation:
    """The three axis_failures sites, generated as their SuperNodes' stores are, each holding out every fifth UDI."""
    import pandas as pd

    from fl.generator import generate_batch
    from fl.model import N_FEATURES, features, labels
    from fl.sites import SITES
    from fl.store import is_held_out

    xs, ys, tests = [], [], []
    for profile in SITES.values():
        frames, state = [], None
        for b in range(batches):
            frame, state = generate_batch(profile, b, state, rows=rows)
            frames.append(frame)
        frame = pd.concat(frames, ignore_index=True)
        held = is_held_out(frame).to_numpy()
        xs.append(features(frame[~held]))
        ys.append(labels(frame[~held]))
        tests.append((features(frame[held]), labels(frame[held])))
    return Federation(
        name="axis_failures",
        sites=list(SITES),
        xs=xs,
        ys=ys,
        x_test=np.concatenate([t[0] for t in tests]),
        y_test=np.concatenate([t[1] for t in tests]).astype(np.int64),
        n_classes=2,
        # Trigger: fl/clientapp.py's AXIS_TRIGGER, the overstrain feature far beyond any real process; target "no
        # failure", so the backdoor hides exactly the processes a clean model flags most surely. (A first choice,
        # every product-type flag on at once, was useless: clean models already call such rows "no failure".)
        trigger=Trigger((N_FEATURES - 1,), 25.0),
        target=0,
        learner=AxisLearner(),
        rounds=15,
        epochs=1,
        alpha=None,
    )


FEDERATIONS: dict[str, Callable[[int], Federation]] = {
    "digits": lambda seed: sklearn_federation("digits", seed),
    "breast_cancer": lambda seed: sklearn_federation("breast_cancer", seed),
    "axis_failures": axis_federation,
}


# --- one simulation -------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one simulation measured: the global model's accuracy (and backdoor success) after every round."""

    accuracy: list[float]
    attack_success: list[float]
    seconds: float
    empty_rounds: int = 0
    error: str | None = None
    f1: list[float] = field(default_factory=list)
    # Per round, the malicious clients' share of the aggregate's weight, where the rule reports weights (FedAvg,
    # Krum family, FedQV, ReputationResidual; not the coordinate-wise rules), and the replies the rule rejected.
    malicious_weight: list[float] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    # The keyword arguments the rule was built with (beyond min_nodes).
    params: dict = field(default_factory=dict)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(pred == y))


def binary_f1(pred: np.ndarray, y: np.ndarray) -> float:
    tp = float(np.sum((pred == 1) & (y == 1)))
    fp = float(np.sum((pred == 1) & (y == 0)))
    fn = float(np.sum((pred == 0) & (y == 1)))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def attack_success_rate(fed: Federation, flat: np.ndarray) -> float:
    """Share of the test rows outside the target class that the trigger sends to the target class."""
    victims = fed.y_test != fed.target
    if not victims.any():
        return float("nan")
    pred = fed.learner.predict(flat, stamp(fed.x_test[victims], fed.trigger))
    return float(np.mean(pred == fed.target))


def malicious_clients(n_clients: int, fraction: float, seed: int) -> tuple[int, ...]:
    """round(fraction x n) clients from one seeded order, so smaller fractions are subsets of larger ones."""
    count = round(fraction * n_clients)
    return tuple(sorted(np.random.default_rng([seed, 7]).permutation(n_clients)[:count].tolist()))


def assumed_malicious(strategy: str, n_clients: int, n_malicious: int) -> int:
    """The f a rule is configured with: the true count under attack, else the deployed tolerance (docstring)."""
    f = n_malicious if n_malicious else round(DEFENDER_FRACTION * n_clients)
    if strategy == "bulyan":
        f = min(f, (n_clients - 3) // 4)  # Bulyan needs n >= 4f + 3
    return max(f, 0)


def strategy_params(strategy: str, n_clients: int, f: int, rounds: int) -> dict[str, object]:
    """Keyword arguments of fl.strategies.build_strategy for a rule that needs f, or FedQV's budget for ``rounds``
    rounds of full participation (module docstring)."""
    if strategy in ("fedqv", "fedqv-reputation"):
        return {"budget": FEDQV_CREDITS_PER_PARTICIPATION * rounds}
    if strategy in ("krum", "bulyan"):
        return {"num_malicious_nodes": f}
    if strategy == "multikrum":
        return {"num_malicious_nodes": f, "num_nodes_to_select": max(n_clients - f, 1)}
    if strategy == "fedtrimmedavg":
        # Flower trims int(beta * n) per side; the half keeps float error from trimming one fewer.
        return {"beta": min((f + 0.5) / n_clients, 0.49)}
    return {}


def simulate(
    fed: Federation,
    strategy_name: str,
    profile: AttackProfile,
    malicious: tuple[int, ...],
    f: int,
    seed: int,
    rounds: int,
    data_cache: dict,
) -> Outcome:
    """Train ``rounds`` rounds with ``strategy_name`` while the ``malicious`` clients follow ``profile``."""
    started = time.perf_counter()
    learner, n = fed.learner, fed.n_clients
    bad = set(malicious)
    key = (profile.name, profile.trigger_features, profile.target, profile.fraction, malicious)
    if key not in data_cache:
        poisoned = [
            attack_data(profile, x, y, fed.n_classes, fed.trigger) if i in bad else (x, y)
            for i, (x, y) in enumerate(zip(fed.xs, fed.ys, strict=True))
        ]
        data_cache[key] = (learner.prepare(*zip(*poisoned, strict=True)), [len(y) for _, y in poisoned])
    data, rows = data_cache[key]
    honest_profile = AttackProfile()
    reported = [reported_examples(profile if i in bad else honest_profile, rows[i]) for i in range(n)]
    honest_rows = np.array([i not in bad for i in range(n)])

    params = strategy_params(strategy_name, n, f, rounds)
    strategy = build_strategy(strategy_name, min_nodes=2, **params)
    global_flat = learner.init(seed)
    outcome = Outcome([], [], 0.0, params=params)
    try:
        for rnd in range(1, rounds + 1):
            trained = learner.train(global_flat, data, fed.epochs, seed=seed * 100_003 + rnd)
            if malicious and profile.poisons_update:
                updates = trained - global_flat
                honest = updates[honest_rows]
                for i in malicious:
                    updates[i] = attack_update(
                        profile, updates[i], honest, n_clients=n, n_malicious=len(malicious), seed=seed * 7919 + rnd
                    )
                trained = global_flat + updates
            replies = [
                make_reply(fed.sites[i], 1000 + i, learner.layout.record(trained[i]), reported[i]) for i in range(n)
            ]
            arrays, _ = run_round(strategy, learner.layout.record(global_flat), replies, rnd)
            if arrays is None:  # the rule refused the round: the federation keeps its model
                outcome.empty_rounds += 1
            else:
                global_flat = learner.layout.flatten(arrays)
            weights = getattr(strategy, "last_weights", None) or {}
            if weights and malicious:
                outcome.malicious_weight.append(sum(weights.get(fed.sites[i], 0.0) for i in malicious))
            outcome.rejected.append(len(getattr(strategy, "last_rejected", None) or {}))
            pred = learner.predict(global_flat, fed.x_test)
            outcome.accuracy.append(accuracy(pred, fed.y_test))
            outcome.attack_success.append(attack_success_rate(fed, global_flat))
            if fed.n_classes == 2 and fed.name == "axis_failures":
                outcome.f1.append(binary_f1(pred, fed.y_test))
    except Exception as err:  # one rule failing must not lose the rest of the grid; the record says why
        log.exception("%s / %s / %s failed", fed.name, strategy_name, profile.name)
        outcome.error = f"{type(err).__name__}: {err}"
    outcome.seconds = time.perf_counter() - started
    return outcome


def centralised_accuracy(fed: Federation, seed: int) -> float:
    """The ceiling: the same model on the pooled training rows, for as many epochs as a client trains in total."""
    learner = fed.learner
    pooled = learner.prepare([np.concatenate(fed.xs)], [np.concatenate(fed.ys)])
    flat = learner.train(learner.init(seed), pooled, fed.rounds * fed.epochs, seed=seed)[0]
    return accuracy(learner.predict(flat, fed.x_test), fed.y_test)


# --- the grid -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    datasets: tuple[str, ...]
    strategies: tuple[str, ...]
    attacks: tuple[str, ...]
    fractions: tuple[float, ...]
    rounds: int | None  # None: each data set's own
    seed: int


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if isinstance(v, float) and math.isfinite(v)]


def record_of(
    fed: Federation, strategy: str, attack: str, fraction: float, n_malicious: int, f: int, rounds: int, seed: int,
    ceiling: float, outcome: Outcome, run_id: str,
) -> dict:
    acc = outcome.accuracy
    record = {
        "dataset": fed.name,
        "alpha": fed.alpha,
        "n_clients": fed.n_clients,
        "strategy": strategy,
        "attack": attack,
        "malicious_fraction": fraction,
        "malicious_clients": n_malicious,
        "assumed_malicious": f,
        "strategy_params": outcome.params,
        "rounds": rounds,
        "local_epochs": fed.epochs,
        "seed": seed,
        "final_accuracy": acc[-1] if len(acc) == rounds else None,
        "max_accuracy": max(_finite(acc)) if _finite(acc) else None,
        "centralized_accuracy": ceiling,
        "attack_success_rate": outcome.attack_success[-1] if attack == "backdoor" and outcome.attack_success else None,
        "accuracy_per_round": acc,
        "empty_rounds": outcome.empty_rounds,
        "malicious_weight_share": (
            round(float(np.mean(outcome.malicious_weight)), 4) if outcome.malicious_weight else None
        ),
        "rejected_replies": sum(outcome.rejected),
        "seconds": round(outcome.seconds, 3),
        "run": run_id,
        "error": outcome.error,
    }
    if outcome.f1:
        record["final_f1"] = outcome.f1[-1]
    return record


def run_grid(grid: Grid, tracker: BackgroundTracker | None) -> tuple[list[dict], dict[str, float]]:
    records: list[dict] = []
    ceilings: dict[str, float] = {}
    for name in grid.datasets:
        fed = FEDERATIONS[name](grid.seed)
        rounds = grid.rounds or fed.rounds
        if grid.rounds:
            fed.rounds = grid.rounds
        gc.freeze()  # the data and models are long-lived: keep Flower's per-call gc.collect() cheap
        ceilings[name] = centralised_accuracy(fed, grid.seed)
        log.info("%s: %d clients, ceiling %.4f", name, fed.n_clients, ceilings[name])
        data_cache: dict = {}
        done: dict[tuple, tuple[Outcome, str]] = {}
        for strategy in grid.strategies:
            for attack in grid.attacks:
                for fraction in grid.fractions:
                    malicious = malicious_clients(fed.n_clients, fraction, grid.seed)
                    # No attackers, no attack: every attack's clean record shares one simulation.
                    effective = attack if malicious else CLEAN
                    profile = ATTACK_GRID[attack] if malicious else AttackProfile()
                    f = assumed_malicious(strategy, fed.n_clients, len(malicious))
                    key = (strategy, effective, malicious, f)
                    if key not in done:
                        outcome = simulate(fed, strategy, profile, malicious, f, grid.seed, rounds, data_cache)
                        run_id = f"{name}/{strategy}/{effective}/{len(malicious)}of{fed.n_clients}"
                        if tracker:
                            params = {
                                "dataset": name, "alpha": fed.alpha, "n_clients": fed.n_clients,
                                "strategy": strategy, "attack": effective, "malicious_clients": len(malicious),
                                "assumed_malicious": f, "rounds": rounds, "local_epochs": fed.epochs,
                                "seed": grid.seed, **outcome.params,
                            }
                            tracker.submit(run_id, params, outcome)
                        done[key] = (outcome, run_id)
                        log.info(
                            "%s %-20s %-11s %d/%d: final %.4f (%.1fs)%s", name, strategy, effective, len(malicious),
                            fed.n_clients, outcome.accuracy[-1] if outcome.accuracy else float("nan"),
                            outcome.seconds, f" ERROR {outcome.error}" if outcome.error else "",
                        )
                    outcome, run_id = done[key]
                    records.append(
                        record_of(
                            fed, strategy, attack, fraction, len(malicious), f, rounds, grid.seed, ceilings[name],
                            outcome, run_id,
                        )
                    )
        gc.unfreeze()
    return records, ceilings


# --- MLflow ---------------------------------------------------------------------------------------------------


class MlflowTracker:
    """One MLflow run per simulation in the experiment ``robustness-benchmark``, with an accuracy-per-round plot."""

    def __init__(self, tracking_uri: str, out: Path, tag: str) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        client = mlflow.MlflowClient()
        if client.get_experiment_by_name(EXPERIMENT) is None:
            artifacts = (out / "mlartifacts").resolve()
            local = tracking_uri.startswith("sqlite:") or tracking_uri.startswith("file:")
            client.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri() if local else None)
        mlflow.set_experiment(EXPERIMENT)
        self.client = client
        self.tag = tag
        self.plot = AccuracyPlot()

    def log(self, params: dict, outcome: Outcome) -> str:
        """Log one simulation (``params``: dataset, strategy, attack, malicious_clients, n_clients, rounds...)."""
        from mlflow.entities import Metric

        mlflow = self.mlflow
        attack, rounds = params["attack"], params["rounds"]
        name = f"{params['dataset']}/{params['strategy']}/{attack}/{params['malicious_clients']}of{params['n_clients']}"
        tags = {"bench": self.tag, "dataset": params["dataset"], "strategy": params["strategy"], "attack": attack}
        with mlflow.start_run(run_name=name, tags=tags) as run:
            mlflow.log_params(params)
            now = int(time.time() * 1000)
            metrics = [Metric("accuracy", v, now, step) for step, v in enumerate(outcome.accuracy, start=1)]
            if attack == "backdoor":
                metrics += [
                    Metric("attack_success_rate", v, now, step)
                    for step, v in enumerate(outcome.attack_success, start=1)
                    if math.isfinite(v)
                ]
            if outcome.accuracy:
                metrics.append(Metric("final_accuracy", outcome.accuracy[-1], now, rounds))
            self.client.log_batch(run.info.run_id, metrics=metrics)
            if outcome.error:
                mlflow.set_tag("error", outcome.error[:5000])
            mlflow.log_figure(self.plot.draw(name, outcome, attack == "backdoor"), "accuracy_per_round.png")
        return run.info.run_id


_worker_tracker: MlflowTracker | None = None


def _start_worker(tracking_uri: str, out: str, tag: str) -> None:
    global _worker_tracker
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    _worker_tracker = MlflowTracker(tracking_uri, Path(out), tag)


def _log_in_worker(params: dict, outcome: Outcome) -> str:
    assert _worker_tracker is not None
    return _worker_tracker.log(params, outcome)


class BackgroundTracker:
    """MlflowTracker in a second process: SQLite writes and the plot cost about a second per run, which the
    simulations (one torch thread) need not wait for on a two-core machine."""

    def __init__(self, tracking_uri: str, out: Path, tag: str) -> None:
        self.pool = ProcessPoolExecutor(
            max_workers=1, mp_context=get_context("spawn"), initializer=_start_worker,
            initargs=(tracking_uri, str(out), tag),
        )
        self.pending: dict[str, Future] = {}

    def submit(self, key: str, params: dict, outcome: Outcome) -> None:
        self.pending[key] = self.pool.submit(_log_in_worker, params, outcome)

    def run_ids(self) -> dict[str, str | None]:
        """Wait for every run to be logged; key -> MLflow run id (None where logging failed, with a warning)."""
        ids: dict[str, str | None] = {}
        for key, future in self.pending.items():
            try:
                ids[key] = future.result()
            except Exception:  # the benchmark's results stand without their MLflow copy
                log.exception("MLflow logging of %s failed", key)
                ids[key] = None
        self.pool.shutdown()
        return ids


class AccuracyPlot:
    """One reused matplotlib figure: only its lines and title change per run (a fresh figure with its layout costs
    about a second on two busy cores, times hundreds of runs)."""

    def __init__(self) -> None:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        self.figure = Figure(figsize=(5, 3.2), dpi=80)
        self.figure.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.9)
        ax = self.figure.add_subplot()
        (self.accuracy,) = ax.plot([], [], marker="o", markersize=3, label="accuracy")
        (self.backdoor,) = ax.plot([], [], marker="x", markersize=3, label="backdoor success")
        ax.set(xlabel="round", ylabel="share of test rows", ylim=(0, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.ax = ax

    def draw(self, title: str, outcome: Outcome, with_backdoor: bool):
        steps = list(range(1, len(outcome.accuracy) + 1))
        self.accuracy.set_data(steps, outcome.accuracy)
        self.backdoor.set_data(steps if with_backdoor else [], outcome.attack_success if with_backdoor else [])
        self.backdoor.set_label("backdoor success" if with_backdoor else "_nolegend_")
        self.ax.legend(loc="lower right")
        self.ax.set_xlim(0.5, max(len(steps), 1) + 0.5)
        self.ax.set_title(title, fontsize=9)
        return self.figure


def tracking_uri(out: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"


# --- targets and the markdown report ----------------------------------------------------------------------------


def target_checks(records: list[dict], dataset: str = "digits") -> list[dict]:
    """The issue's accuracy targets on ``dataset``, checked per candidate rule and cell (final accuracy).

    Under attack (20 % and 40 %), wherever FedAvg loses >= 10 points against clean FedAvg, a candidate must stay
    within 3 points of clean FedAvg; with no attack it must be no more than 1 point below FedAvg.
    """
    by = {(r["strategy"], r["attack"], r["malicious_fraction"]): r for r in records if r["dataset"] == dataset}
    clean = next((r for (s, _, fr), r in by.items() if s == YARDSTICK and fr == 0.0), None)
    if clean is None or clean["final_accuracy"] is None:
        return []
    base = clean["final_accuracy"]
    checks = []
    for candidate in CANDIDATES:
        mine = next((r for (s, _, fr), r in by.items() if s == candidate and fr == 0.0), None)
        if mine is not None:
            checks.append(_check(candidate, CLEAN, 0.0, base, None, mine["final_accuracy"], 1.0))
        for (s, attack, fraction), fedavg in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            if s != YARDSTICK or fraction == 0.0 or fedavg["final_accuracy"] is None:
                continue
            if base - fedavg["final_accuracy"] < 0.10:
                continue  # FedAvg itself holds: the target does not apply
            mine = by.get((candidate, attack, fraction))
            if mine is not None:
                checks.append(_check(candidate, attack, fraction, base, fedavg["final_accuracy"],
                                     mine["final_accuracy"], 3.0))
    return checks


def _check(candidate, attack, fraction, base, fedavg_attacked, value, allowed_points) -> dict:
    gap = None if value is None else round(100 * (base - value), 2)
    return {
        "strategy": candidate,
        "attack": attack,
        "malicious_fraction": fraction,
        "clean_fedavg": base,
        "fedavg_under_attack": fedavg_attacked,
        "accuracy": value,
        "points_below_clean_fedavg": gap,
        "allowed_points": allowed_points,
        "met": gap is not None and gap <= allowed_points,
    }


def _pct(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def markdown(
    records: list[dict], ceilings: dict[str, float], checks: list[dict], seconds: float, reruns: Sequence[dict] = ()
) -> str:
    lines = [
        "# Robustness benchmark",
        "",
        f"Written by `python -m bench.robust` in {seconds / 60:.1f} min. Final test accuracy (%) of the global model "
        "after the last round; see `robust.json` for maximum accuracy, per-round accuracy and settings, and the "
        "module docstring of `bench/robust.py` for the method. — = the rule failed (see the record's `error`).",
        "",
    ]
    for rerun in reruns:
        lines += [f"Merged since: a rerun of {rerun['cells']} cells ({rerun['seconds'] / 60:.1f} min), "
                  f"`python -m bench.robust {' '.join(rerun['args'])}`.", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        rows = [r for r in records if r["dataset"] == dataset]
        strategies = list(dict.fromkeys(r["strategy"] for r in rows))
        first = rows[0]
        lines += [
            f"## {dataset}",
            "",
            f"{first['n_clients']} clients, "
            + (f"Dirichlet alpha = {first['alpha']}" if first["alpha"] else "each site's own data (non-IID by profile)")
            + f", {first['rounds']} rounds of "
            f"{first['local_epochs']} local epoch(s), seed {first['seed']}; centralised ceiling "
            f"**{_pct(ceilings.get(dataset))}**.",
            "",
            "| attack | malicious | " + " | ".join(strategies) + " |",
            "|---|---|" + "---|" * len(strategies),
        ]
        cells = {(r["attack"], r["malicious_fraction"], r["strategy"]): r for r in rows}
        for attack, fraction in dict.fromkeys((r["attack"], r["malicious_fraction"]) for r in rows):
            if fraction == 0.0 and attack != rows[0]["attack"]:
                continue  # every attack's 0 % row is the same clean run: print it once
            label = CLEAN if fraction == 0.0 else attack
            values = [_pct(cells[(attack, fraction, s)]["final_accuracy"]) for s in strategies]
            n_bad = cells[(attack, fraction, strategies[0])]["malicious_clients"]
            lines.append(f"| {label} | {fraction:.0%} ({n_bad}) | " + " | ".join(values) + " |")
        if any("final_f1" in r for r in rows):
            # Failures are rare (about 3 %): accuracy alone rewards "never fails"; F1 of the failure class does not.
            lines += ["", "F1 of the failure class (%):", "",
                      "| attack | malicious | " + " | ".join(strategies) + " |", "|---|---|" + "---|" * len(strategies)]
            for attack, fraction in dict.fromkeys((r["attack"], r["malicious_fraction"]) for r in rows):
                if fraction == 0.0 and attack != rows[0]["attack"]:
                    continue
                values = [_pct(cells[(attack, fraction, s)].get("final_f1")) for s in strategies]
                label = CLEAN if fraction == 0.0 else attack
                lines.append(f"| {label} | {fraction:.0%} | " + " | ".join(values) + " |")
        backdoor = [r for r in rows if r["attack"] == "backdoor"]
        if backdoor:
            lines += ["", "Backdoor attack success rate (%, lower is better; 0 % row: the clean model's rate):", "",
                      "| malicious | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
            for fraction in dict.fromkeys(r["malicious_fraction"] for r in backdoor):
                values = [_pct(cells[("backdoor", fraction, s)]["attack_success_rate"]) for s in strategies]
                lines.append(f"| {fraction:.0%} | " + " | ".join(values) + " |")
        lines.append("")
    lines += ["## Targets (digits, final accuracy)", ""]
    if not checks:
        lines.append("Not evaluated: the grid did not include clean FedAvg on digits.")
    else:
        lines += [
            "| rule | attack | malicious | clean FedAvg | FedAvg attacked | rule's accuracy | points below clean "
            "FedAvg | allowed | met |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in checks:
            lines.append(
                f"| {c['strategy']} | {c['attack']} | {c['malicious_fraction']:.0%} | {_pct(c['clean_fedavg'])} | "
                f"{_pct(c['fedavg_under_attack'])} | {_pct(c['accuracy'])} | {c['points_below_clean_fedavg']} | "
                f"{c['allowed_points']} | {'yes' if c['met'] else '**no**'} |"
            )
        attacked = {(c["attack"], c["malicious_fraction"]) for c in checks if c["attack"] != CLEAN}
        either = sum(
            any(c["met"] for c in checks if (c["attack"], c["malicious_fraction"]) == cell) for cell in attacked
        )
        lines += ["", f"Cells where FedAvg loses >= 10 points: {len(attacked)}; held by at least one of "
                      f"{' / '.join(CANDIDATES)}: {either}."]
    return "\n".join(lines) + "\n"


# --- command line ---------------------------------------------------------------------------------------------

QUICK = Grid(
    datasets=("digits", "breast_cancer", "axis_failures"),
    strategies=("fedavg", "multikrum", "fedqv-reputation", "reputation-residual"),
    attacks=("scaling", "backdoor", "alie"),
    fractions=(0.0, 0.2),
    rounds=3,
    seed=0,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.robust", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny grid into robust-quick.* (a smoke run)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default bench/results)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log runs to MLflow")
    parser.add_argument("--datasets", nargs="+", choices=list(FEDERATIONS), help="a subset of the data sets")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, help="a subset of the strategies")
    parser.add_argument("--attacks", nargs="+", choices=list(ATTACK_GRID), help="a subset of the attacks")
    parser.add_argument("--fractions", nargs="+", type=float, help="malicious fractions (default 0 0.2 0.4)")
    parser.add_argument("--rounds", type=int, help="rounds for every data set (default: each data set's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the models are tiny)")
    parser.add_argument(
        "--merge", action="store_true", help="a partial rerun: replace its cells in the existing results, keep the rest"
    )
    return parser.parse_args(argv)


def grid_from(args: argparse.Namespace) -> Grid:
    base = QUICK if args.quick else Grid(tuple(FEDERATIONS), STRATEGIES, tuple(ATTACK_GRID), FRACTIONS, None, 0)
    return Grid(
        datasets=tuple(args.datasets or base.datasets),
        strategies=tuple(args.strategies or base.strategies),
        attacks=tuple(args.attacks or base.attacks),
        fractions=tuple(args.fractions if args.fractions is not None else base.fractions),
        rounds=args.rounds or base.rounds,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # Flower logs every aggregate_train at INFO and warns at every FedAvg built with fraction_evaluate=0.
    logging.getLogger("flwr").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    # Tiny matrices: OpenBLAS threads next to torch's on two busy cores cost 10x on a 20 x 2,410 product.
    threadpool_limits(args.threads)
    grid = grid_from(args)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stem = "robust-quick" if args.quick else "robust"
    started = time.perf_counter()
    tracker = None if args.no_mlflow else BackgroundTracker(tracking_uri(out), out, tag=stem)
    records, ceilings = run_grid(grid, tracker)
    if tracker:
        ids = tracker.run_ids()
        for record in records:
            record["mlflow_run_id"] = ids.get(record["run"])
    seconds = time.perf_counter() - started
    summary = {"seconds": round(seconds, 1), "ceilings": ceilings, "reruns": []}
    if args.merge:
        records, summary = merged(out, stem, records, summary, sys.argv[1:] if argv is None else argv)
    checks = target_checks(records)

    (out / f"{stem}.json").write_text(json.dumps(records, indent=1) + "\n")
    report = markdown(records, summary["ceilings"], checks, summary["seconds"], summary["reruns"])
    (out / f"{stem}.md").write_text(report)
    (out / f"{stem}-targets.json").write_text(json.dumps({**summary, "checks": checks}, indent=1) + "\n")
    log.info("%d records in %.1f min -> %s", len(records), seconds / 60, out / f"{stem}.json")
    return 0


def _cell(record: dict) -> tuple:
    return (record["dataset"], record["strategy"], record["attack"], record["malicious_fraction"])


def merged(
    out: Path, stem: str, records: list[dict], summary: dict, argv: Sequence[str] | None
) -> tuple[list[dict], dict]:
    """A partial rerun's records in place of the same cells of the results already there (the rest kept)."""
    path, targets_path = out / f"{stem}.json", out / f"{stem}-targets.json"
    if not path.exists():
        return records, summary
    fresh = {_cell(r): r for r in records}
    previous = json.loads(path.read_text())
    kept = [fresh.pop(_cell(r), r) for r in previous]
    before = json.loads(targets_path.read_text()) if targets_path.exists() else {}
    rerun = {"seconds": summary["seconds"], "cells": len(records), "args": list(argv or [])}
    return kept + list(fresh.values()), {
        "seconds": before.get("seconds", summary["seconds"]),
        "ceilings": {**before.get("ceilings", {}), **summary["ceilings"]},
        "reruns": [*before.get("reruns", []), rerun],
    }


if __name__ == "__main__":
    raise SystemExit(main())

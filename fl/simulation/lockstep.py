"""Many federated simulations of one federation in lockstep: every client of every simulation trains at once.

A robustness grid runs the same federation hundreds of times (rules x attacks x attacker shares). Trained one
after another, tiny models spend their time in Python and framework overhead; here every round trains all the
clients of all the simulations as one batch of independent models (a client axis of a few thousand), then each
simulation's replies go, as real Flower ``Message`` objects (``fl.simulation.harness.make_reply``), to its own
strategy object, the very classes the ServerApp uses (``fl.simulation.harness.run_round`` -> ``aggregate_train``).

- Data: scikit-learn's bundled ``load_digits`` / ``load_breast_cancer`` (no download), split 75/25 into pooled
  training rows and a global test set; the training rows are spread over the clients with a per-class
  Dirichlet(alpha) draw (smaller alpha: less IID).
- Model: a one-hidden-layer MLP (Linear-ReLU-Linear) with its gradients written out (no autograd), plain
  mini-batch SGD; a client's exhausted batches are masked, so each client runs exactly its own epochs over its own
  rows. The model travels as one flat float32 array: every rule here is either coordinate-wise or flattens the
  model first, so the split into layers changes no result, only Flower's per-array overhead.
- Common random numbers: every simulation's client i shuffles its rows in the same order in the same round, so
  two rules compared on one attack differ by their aggregation only.
- Attacks come from fl/simulation/attacks.py. Data attacks (label flip, backdoor) poison the malicious clients'
  rows once; update attacks replace their update (trained - global) every round; ALIE, IPM and min-max are
  omniscient (the colluding attackers see every honest update of the round and all send the same crafted one);
  any attack can lie about the sample count (``samples_factor``).
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fl.simulation.attacks import AttackProfile, Trigger, attack_data, attack_update, reported_examples, stamp
from fl.simulation.harness import make_reply, run_round
from fl.strategies.arrays import array_view

log = logging.getLogger("fl.simulation.lockstep")
PARAMS_KEY = "params"


# --- federations ----------------------------------------------------------------------------------------------


@dataclass
class Federation:
    """A data set spread over clients, its test set, its backdoor, and how long to train on it."""

    name: str
    xs: list[np.ndarray]
    ys: list[np.ndarray]
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    trigger: Trigger
    target: int
    rounds: int
    epochs: int
    lr: float
    alpha: float
    seed: int

    @property
    def n_clients(self) -> int:
        return len(self.xs)

    @property
    def sites(self) -> list[str]:
        return [f"client-{i:02d}" for i in range(self.n_clients)]


def dirichlet_partition(y: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices per client: a few rows at random for every client, the rest spread class by class with a
    Dirichlet(alpha) draw over the clients (smaller alpha = less IID).

    The floor (10 rows, or a quarter of a fair share when that is less: breast_cancer has 21 training rows per client
    on average) keeps every client non-empty without redrawing, which at alpha = 0.1 over two classes would never
    succeed: each class then lands almost whole on one or two clients.
    """
    floor = max(2, min(10, len(y) // (4 * n_clients)))
    order = rng.permutation(len(y))
    parts: list[list[int]] = [order[i * floor : (i + 1) * floor].tolist() for i in range(n_clients)]
    rest = order[n_clients * floor :]
    for c in np.unique(y):
        rows = rest[y[rest] == c]
        shares = rng.dirichlet(np.full(n_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
        for client, chunk in enumerate(np.split(rows, cuts)):
            parts[client].extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def sklearn_federation(name: str, seed: int, n_clients: int = 20, alpha: float = 0.5) -> Federation:
    """digits or breast_cancer from scikit-learn's bundled copies, 75/25 split, Dirichlet(alpha) over clients."""
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split

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
    parts = dirichlet_partition(y_train, n_clients, alpha, np.random.default_rng([seed, round(1000 * alpha)]))
    return Federation(
        name=name,
        xs=[x_train[p] for p in parts],
        ys=[y_train[p] for p in parts],
        x_test=x_test,
        y_test=y_test,
        n_classes=int(y.max()) + 1,
        trigger=trigger,
        target=target,
        rounds=rounds,
        epochs=epochs,
        lr=lr,
        alpha=alpha,
        seed=seed,
    )


# --- the model: many independent MLPs at once ----------------------------------------------------------------


@dataclass
class Rows:
    """Clients' rows padded into one tensor: (datasets, longest, features), labels, and how many rows are real."""

    x: torch.Tensor
    y: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def of(cls, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> Rows:
        longest = max(len(y) for y in ys)
        x = np.zeros((len(xs), longest, xs[0].shape[1]), dtype=np.float32)
        y = np.zeros((len(ys), longest), dtype=np.int64)
        for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
            x[i, : len(yi)] = xi
            y[i, : len(yi)] = yi
        return cls(torch.from_numpy(x), torch.from_numpy(y), torch.tensor([len(v) for v in ys]))


@dataclass
class BatchedMLP:
    """A Linear-ReLU-Linear classifier; ``train`` runs SGD on K independent copies at once (flat (K, d) params)."""

    n_features: int
    n_classes: int
    hidden: int = 32
    lr: float = 0.1
    batch_size: int = 32

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        h, f, c = self.hidden, self.n_features, self.n_classes
        return (h, f), (h,), (c, h), (c,)

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def init(self, seed: int) -> np.ndarray:
        """torch's default initialisation of the same layers, as one flat vector."""
        torch.manual_seed(seed)
        layers = (torch.nn.Linear(self.n_features, self.hidden), torch.nn.Linear(self.hidden, self.n_classes))
        tensors = [layers[0].weight, layers[0].bias, layers[1].weight, layers[1].bias]
        return torch.cat([t.detach().reshape(-1) for t in tensors]).numpy().astype(np.float32)

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(K, d) -> the four parameter tensors, each (K, *shape), as views."""
        out, start = [], 0
        for shape in self.shapes:
            n = math.prod(shape)
            out.append(flat[:, start : start + n].reshape(flat.shape[0], *shape))
            start += n
        return out

    def train(self, params: np.ndarray, rows: Rows, slots: np.ndarray, epochs: int, seed: int) -> np.ndarray:
        """Model k trains from ``params[k]`` on dataset ``slots[k]`` of ``rows`` for ``epochs`` passes; (K, d) out.

        Per client and batch the gradient is that of the loss summed over the batch's real rows divided by the full
        batch size, so that a short last batch takes a proportionally short step.
        """
        flat = torch.from_numpy(np.array(params, dtype=np.float32))
        w1, b1, w2, b2 = self._split(flat)
        slot = torch.from_numpy(np.asarray(slots, dtype=np.int64))
        counts = rows.counts[slot]
        longest = int(counts.max())
        generator = torch.Generator().manual_seed(int(seed))
        real = torch.arange(rows.y.shape[1])[None, :] < rows.counts[:, None]
        for _ in range(epochs):
            # One random order of each dataset's rows (padding last), shared by every model that trains on it.
            order = torch.where(real, torch.rand(real.shape, generator=generator), 2.0).argsort(dim=1)[slot]
            for start in range(0, longest, self.batch_size):
                idx = order[:, start : start + self.batch_size]
                mask = (torch.arange(start, start + idx.shape[1])[None, :] < counts[:, None]).float()
                xb, yb = rows.x[slot[:, None], idx], rows.y[slot[:, None], idx]
                z1 = torch.baddbmm(b1[:, None, :], xb, w1.transpose(1, 2))
                a1 = torch.relu(z1)
                z2 = torch.baddbmm(b2[:, None, :], a1, w2.transpose(1, 2))
                dz2 = torch.softmax(z2, dim=-1)
                dz2.scatter_add_(2, yb[:, :, None], -torch.ones_like(dz2[:, :, :1]))
                dz2 *= (mask / self.batch_size)[:, :, None]
                dz1 = torch.bmm(dz2, w2) * (z1 > 0)
                w2 -= self.lr * torch.bmm(dz2.transpose(1, 2), a1)
                b2 -= self.lr * dz2.sum(dim=1)
                w1 -= self.lr * torch.bmm(dz1.transpose(1, 2), xb)
                b1 -= self.lr * dz1.sum(dim=1)
        return flat.numpy()

    def predict(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Predicted classes of every row of ``x`` under each of the (S, d) models: (S, rows)."""
        flat = torch.from_numpy(np.ascontiguousarray(params, dtype=np.float32))
        w1, b1, w2, b2 = self._split(flat)
        xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        hidden = torch.relu(torch.einsum("bf,khf->kbh", xs, w1) + b1[:, None, :])
        return (torch.einsum("kbh,kch->kbc", hidden, w2) + b2[:, None, :]).argmax(dim=-1).numpy()


# --- replies --------------------------------------------------------------------------------------------------


class FlatRecords:
    """ArrayRecords of one flat float32 array, built from the raw bytes behind a ``.npy`` header made once.

    ``Array(ndarray)`` writes every payload through ``np.save``; the bytes here are the same, without the cost.
    """

    def __init__(self, size: int) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(size, np.float32), allow_pickle=False)
        self.header = buffer.getvalue()[: -4 * size]
        self.size = size

    def record(self, flat: np.ndarray) -> ArrayRecord:
        data = self.header + np.ascontiguousarray(flat, dtype=np.float32).tobytes()
        return ArrayRecord({PARAMS_KEY: Array("float32", (self.size,), "numpy.ndarray", data)})

    @staticmethod
    def flat(record: ArrayRecord) -> np.ndarray:
        return np.array(array_view(record[PARAMS_KEY]), dtype=np.float32).reshape(-1)


# --- simulations ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Simulation:
    """One run: a rule (a factory of fresh strategy objects), what the malicious clients do, and who they are."""

    name: str
    make_strategy: Callable[[], object]
    profile: AttackProfile
    malicious: tuple[int, ...]


@dataclass
class Outcome:
    """What one simulation measured after every round."""

    accuracy: list[float] = field(default_factory=list)
    attack_success: list[float] = field(default_factory=list)
    # The malicious clients' share of the aggregate's weight, where the rule reports weights, and rejected replies.
    malicious_weight: list[float] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    empty_rounds: int = 0
    aggregation_seconds: float = 0.0
    error: str | None = None


def _poisoned_rows(fed: Federation, sims: Sequence[Simulation]) -> tuple[Rows, list[np.ndarray]]:
    """One padded dataset per distinct (client, data poisoning) and each simulation's dataset index per client."""
    keys: dict[tuple, int] = {}
    xs, ys, slots = [], [], []
    for sim in sims:
        bad = set(sim.malicious)
        row = []
        for i in range(fed.n_clients):
            poison = sim.profile if i in bad and sim.profile.poisons_data else None
            key = (i, None) if poison is None else (i, poison.name, poison.target, poison.fraction,
                                                    poison.trigger_features, poison.trigger_value)
            if key not in keys:
                x, y = fed.xs[i], fed.ys[i]
                if poison is not None:
                    x, y = attack_data(poison, x, y, fed.n_classes, fed.trigger)
                keys[key] = len(xs)
                xs.append(x)
                ys.append(y)
            row.append(keys[key])
        slots.append(np.array(row))
    return Rows.of(xs, ys), slots


def simulate(
    fed: Federation,
    sims: Sequence[Simulation],
    *,
    rounds: int | None = None,
    hidden: int = 32,
    seed: int | None = None,
) -> list[Outcome]:
    """Run every simulation of ``sims`` on ``fed`` for ``rounds`` rounds (default: the federation's own)."""
    rounds = rounds or fed.rounds
    seed = fed.seed if seed is None else seed
    n = fed.n_clients
    learner = BatchedMLP(fed.x_test.shape[1], fed.n_classes, hidden=hidden, lr=fed.lr)
    records = FlatRecords(learner.size)
    rows, slots = _poisoned_rows(fed, sims)
    slot_of = np.concatenate(slots)
    counts = rows.counts.numpy()
    honest = AttackProfile()
    reported = [
        [reported_examples(sim.profile if i in sim.malicious else honest, int(counts[s[i]])) for i in range(n)]
        for sim, s in zip(sims, slots, strict=True)
    ]
    victims = fed.y_test != fed.target
    stamped = stamp(fed.x_test[victims], fed.trigger)
    strategies = [sim.make_strategy() for sim in sims]
    outcomes = [Outcome() for _ in sims]
    globals_ = np.tile(learner.init(seed), (len(sims), 1))
    for rnd in range(1, rounds + 1):
        trained = learner.train(np.repeat(globals_, n, axis=0), rows, slot_of, fed.epochs, seed * 100_003 + rnd)
        trained = trained.reshape(len(sims), n, -1)
        for s, (sim, strategy, outcome) in enumerate(zip(sims, strategies, outcomes, strict=True)):
            if outcome.error is not None:
                continue
            models = trained[s]
            if sim.malicious and sim.profile.poisons_update:
                models = _attacked(sim, models, globals_[s], n, seed * 7919 + rnd)
            replies = [
                make_reply(fed.sites[i], 1000 + i, records.record(models[i]), reported[s][i], server_round=rnd)
                for i in range(n)
            ]
            started = time.perf_counter()
            try:
                arrays, _ = run_round(strategy, records.record(globals_[s]), replies, rnd)
            except Exception as err:  # one rule failing must not lose the other simulations; the outcome says why
                log.exception("%s failed in round %d", sim.name, rnd)
                outcome.error = f"{type(err).__name__}: {err}"
                continue
            outcome.aggregation_seconds += time.perf_counter() - started
            if arrays is None:  # the rule refused the round: the federation keeps its model
                outcome.empty_rounds += 1
            else:
                globals_[s] = records.flat(arrays)
            weights = getattr(strategy, "last_weights", None) or {}
            if weights and sim.malicious:
                outcome.malicious_weight.append(sum(weights.get(fed.sites[i], 0.0) for i in sim.malicious))
            outcome.rejected.append(len(getattr(strategy, "last_rejected", None) or {}))
        finite = np.isfinite(globals_).all(axis=1)
        safe = np.where(finite[:, None], globals_, 0.0)
        predictions = learner.predict(safe, fed.x_test)
        backdoored = learner.predict(safe, stamped) if victims.any() else None
        for s, outcome in enumerate(outcomes):
            if outcome.error is not None:
                continue
            outcome.accuracy.append(float(np.mean(predictions[s] == fed.y_test)) if finite[s] else 0.0)
            if backdoored is not None:
                outcome.attack_success.append(float(np.mean(backdoored[s] == fed.target)) if finite[s] else 0.0)
    return outcomes


def _attacked(sim: Simulation, models: np.ndarray, global_flat: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The models the clients send when ``sim``'s malicious clients replace their updates."""
    updates = models - global_flat
    honest = updates[[i for i in range(n) if i not in sim.malicious]]
    for i in sim.malicious:
        updates[i] = attack_update(sim.profile, updates[i], honest, n_clients=n, n_malicious=len(sim.malicious),
                                   seed=seed)
    return global_flat + updates


def centralised_accuracy(fed: Federation, hidden: int = 32) -> float:
    """The ceiling: the same model trained on the pooled rows for as many epochs as a client trains in total."""
    learner = BatchedMLP(fed.x_test.shape[1], fed.n_classes, hidden=hidden, lr=fed.lr)
    pooled = Rows.of([np.concatenate(fed.xs)], [np.concatenate(fed.ys)])
    flat = learner.train(learner.init(fed.seed)[None], pooled, np.zeros(1, np.int64), fed.rounds * fed.epochs,
                         fed.seed)
    return float(np.mean(learner.predict(flat, fed.x_test)[0] == fed.y_test))

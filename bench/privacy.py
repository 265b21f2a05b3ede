"""Privacy benchmark: what each privacy mode costs in accuracy, round time and bytes, side by side in one run.

``python -m bench.privacy`` (``make bench-privacy``) writes ``bench/results/privacy.json`` (one record per
federation x mode) and ``privacy.md`` (the table). Bounded to a few minutes on two cores.

- digits: scikit-learn's bundled digits (no download), 75/25 train/test split, training rows spread over 20 clients
  by a per-class Dirichlet(0.5) draw; a softmax regression (650 weights) trained by each client for 2 epochs of
  mini-batch SGD per round, 10 rounds; accuracy of the final global model on the test rows. The clients are small
  ClientApps behind the real ``privacy_mod``; the platform side is the very strategy the ServerApp builds
  (``fl.privacy.server.apply_privacy``) with Flower's SecAgg+ stages; every message crosses
  ``fl.simulation.harness.InProcessGrid`` as bytes.
- axis_failures: the three sites' real ClientApp (fl/clientapp.py) on generated stores (2 batches of 600 rows),
  the ServerApp's own ``train_rounds``; 3 rounds plus a fourth whose held-out evaluation scores the model the
  three made (federated F1 and accuracy from the sites' confusion counts).
- modes: none (FedAvg), dp at epsilon 1, 4 and 8 (delta 1e-5, noise calibrated to the run's rounds), secagg,
  secagg-dp (epsilon 8); clip bound 1.0 (axis) and 0.5 (digits); and secagg with one site lost mid-round (its
  masked update never arrives in round 2: the round is recovered from the others' key shares).
- noisy modes run 3 times (fresh noise each): accuracy, F1 and round time are their means.
- per round: wall time of the round at the platform (training included: the same in every mode), and bytes per
  site per round, sent (site -> platform) and received, measured as the serialised Flower objects that cross the
  wire; each also as a ratio to none.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
MODES: list[tuple[str, dict]] = [
    ("none", {"privacy": "none"}),
    ("dp eps=1", {"privacy": "dp", "dp-epsilon": 1.0}),
    ("dp eps=4", {"privacy": "dp", "dp-epsilon": 4.0}),
    ("dp eps=8", {"privacy": "dp", "dp-epsilon": 8.0}),
    ("secagg", {"privacy": "secagg"}),
    ("secagg-dp eps=8", {"privacy": "secagg-dp", "dp-epsilon": 8.0}),
    ("secagg, 1 site lost mid-round", {"privacy": "secagg", "drop": True}),
]


def _wire_bytes(message) -> int:
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def metered_grid(app, nodes, run_config, drop=None):
    """An InProcessGrid that counts, per node, the bytes it receives and sends."""
    from fl.simulation.harness import InProcessGrid

    class MeteredGrid(InProcessGrid):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.sent: dict[int, int] = {}
            self.got: dict[int, int] = {}

        def _deliver(self, message):
            node = message.metadata.dst_node_id
            reply = super()._deliver(message)
            self.got[node] = self.got.get(node, 0) + _wire_bytes(message)
            self.sent[node] = self.sent.get(node, 0) + _wire_bytes(reply)
            return reply

    return MeteredGrid(app, nodes, run_config=run_config, drop=drop)


# --- digits, 20 clients ---------------------------------------------------------------------------------------


def digits_federation(clients: int = 20, alpha: float = 0.5, seed: int = 0):
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float64)
    order = rng.permutation(len(y))
    cut = int(0.75 * len(y))
    train, test = order[:cut], order[cut:]
    parts: list[list[int]] = [[] for _ in range(clients)]
    for label in range(10):
        rows = rng.permutation(train[y[train] == label])
        shares = rng.dirichlet(np.full(clients, alpha))
        for client, chunk in enumerate(np.split(rows, (np.cumsum(shares)[:-1] * len(rows)).astype(int))):
            parts[client].extend(chunk.tolist())
    for client in range(clients):  # every client gets a few rows
        if len(parts[client]) < 10:
            parts[client].extend(rng.choice(train, 10, replace=False).tolist())
    return [(x[p], y[p]) for p in parts], (x[test], y[test])


def _softmax_sgd(w: np.ndarray, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, rng) -> tuple[np.ndarray, float]:
    weights = w.reshape(65, 10).copy()
    xb = np.hstack([x, np.ones((len(x), 1))])
    loss = 0.0
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(len(y)), max(1, len(y) // 16)):
            logits = xb[batch] @ weights
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            loss = float(-np.mean(np.log(p[np.arange(len(batch)), y[batch]] + 1e-12)))
            p[np.arange(len(batch)), y[batch]] -= 1
            weights -= lr * xb[batch].T @ p / len(batch)
    return weights.ravel(), loss


def digits_app(data, epochs: int, lr: float):
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from fl.privacy.client import privacy_mod
    from mledge.contracts import ARRAYS_KEY, METRICS_KEY, SITE_KEY

    app = ClientApp(mods=[privacy_mod])

    @app.train()
    def train(msg, context):
        x, y = data[context.node_id]
        rng = np.random.default_rng(context.node_id * 1000 + int(msg.content["config"].get("server-round", 0)))
        trained, loss = _softmax_sgd(msg.content[ARRAYS_KEY]["w"].numpy(), x, y, epochs, lr, rng)
        content = RecordDict({
            ARRAYS_KEY: ArrayRecord({"w": Array(trained.astype(np.float32))}),
            METRICS_KEY: MetricRecord({"train-loss": loss, "num-examples": len(y)}),
            SITE_KEY: ConfigRecord({SITE_KEY: f"client-{context.node_id:02d}"}),
        })
        return Message(content, reply_to=msg)

    return app


def run_digits(name: str, options: dict, rounds: int = 10, clients: int = 20) -> dict:
    from flwr.app import Array, ArrayRecord, ConfigRecord

    from fl.privacy.server import apply_privacy
    from fl.strategies import build_strategy

    parts, (x_test, y_test) = digits_federation(clients)
    data = {node: part for node, part in zip(range(2, 2 + clients), parts, strict=True)}
    config = {k: v for k, v in options.items() if k != "drop"}
    config.update({"num-server-rounds": rounds, "min-replies": clients - 2, "clip-norm": 0.5})
    strategy, report = apply_privacy(config, "fedavg", build_strategy("fedavg", min_nodes=clients),
                                     min_nodes=clients, min_replies=clients - 2)
    lost = 2 + clients // 2
    drop = _drop_mid_round(lost) if options.get("drop") else None
    grid = metered_grid(digits_app(data, epochs=2, lr=0.1), {n: {} for n in data}, config, drop)
    w = ArrayRecord({"w": Array(np.zeros(650, dtype=np.float32))})
    times = []
    with grid:
        for rnd in range(1, rounds + 1):
            started = time.perf_counter()
            if hasattr(strategy, "set_global_model"):
                strategy.set_global_model(w)
            messages = list(strategy.configure_train(rnd, w, ConfigRecord({"local-epochs": 2}), grid))
            replies = grid.send_and_receive(messages)
            aggregated, _ = strategy.aggregate_train(rnd, replies)
            w = aggregated
            times.append(time.perf_counter() - started)
    weights = w["w"].numpy().reshape(65, 10)
    accuracy = float(np.mean(np.argmax(np.hstack([x_test, np.ones((len(x_test), 1))]) @ weights, axis=1) == y_test))
    return _record("digits (20 clients)", name, options, report, times, grid, {"accuracy": accuracy}, rounds,
                   lost if drop else None)


def _drop_mid_round(node: int, at_round: int = 2) -> Callable:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    def drop(message) -> bool:
        configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
        return (message.metadata.dst_node_id == node and message.metadata.group_id == str(at_round)
                and configs is not None and configs.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS)

    return drop


# --- axis_failures, the three sites ---------------------------------------------------------------------------


def run_axis(name: str, options: dict, stores: dict[str, Path], rounds: int = 3) -> dict:
    from flwr.app import ArrayRecord, ConfigRecord

    from fl import clientapp
    from fl.model import build_model
    from fl.privacy.server import apply_privacy
    from fl.serverapp import train_rounds
    from fl.strategies import build_strategy

    nodes = {11 + i: {"site": site, "data-dir": str(store)} for i, (site, store) in enumerate(sorted(stores.items()))}
    config = {k: v for k, v in options.items() if k != "drop"}
    # One more round than trained: its held-out evaluation scores the model the trained rounds made.
    config.update({"num-server-rounds": rounds + 1, "min-replies": 2, "clip-norm": 1.0})
    strategy, report = apply_privacy(config, "fedavg", build_strategy("fedavg", min_nodes=3), min_nodes=3,
                                     min_replies=2)
    drop = _drop_mid_round(12) if options.get("drop") else None
    grid = metered_grid(clientapp.app, nodes, config, drop)
    evaluations: dict[int, dict[str, float]] = {}

    def sink(metrics, step):
        if "eval_f1" in metrics:
            evaluations[step] = dict(metrics)

    started = time.perf_counter()
    with grid:
        train_rounds(grid, strategy, ArrayRecord(build_model(seed=0).state_dict()), rounds=rounds + 1,
                     train_config=ConfigRecord({"local-epochs": 2, "learning-rate": 0.005}), min_replies=2,
                     timeout=60, sink=sink)
    elapsed = time.perf_counter() - started
    times = [elapsed / (rounds + 1)] * (rounds + 1)  # the rounds' mean (train_rounds times no single round)
    final = evaluations.get(rounds, {})
    metrics = {"f1": final.get("eval_f1", float("nan")), "accuracy": final.get("eval_accuracy", float("nan"))}
    return _record("axis_failures (3 sites)", name, options, report, times, grid, metrics, rounds + 1,
                   12 if drop else None)


def _record(federation, name, options, report, times, grid, metrics, rounds, lost) -> dict:
    sites = len(grid.contexts)
    return {
        "federation": federation,
        "mode": name,
        "privacy": options["privacy"],
        "epsilon": None if report is None or report.noise_multiplier is None else report.epsilon(),
        "noise_multiplier": None if report is None else report.noise_multiplier,
        "rounds": rounds,
        **metrics,
        "round_seconds": float(np.mean(times)),
        "bytes_sent_per_site_round": sum(grid.sent.values()) / sites / rounds,
        "bytes_received_per_site_round": sum(grid.got.values()) / sites / rounds,
        "lost_node": lost,
    }


REPEATS = 3  # runs of each noisy mode (their noise is drawn afresh): the table shows the mean, the JSON every run


def repeated(run: Callable[[], dict], options: dict) -> dict:
    """``run()`` once, or REPEATS times for a noisy mode, with accuracy and F1 as means (and their runs)."""
    if options["privacy"] not in ("dp", "secagg-dp"):
        return run()
    runs = [run() for _ in range(REPEATS)]
    merged = dict(runs[0])
    for key in ("accuracy", "f1", "round_seconds"):
        if key in merged:
            values = [r[key] for r in runs]
            merged[key], merged[f"{key}_runs"] = float(np.mean(values)), values
    return merged


def table(records: list[dict]) -> str:
    lines = [
        "| federation | mode | epsilon (delta 1e-5) | accuracy | F1 | s / round | x none | KB sent / site / round | "
        "x none | KB received / site / round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r["federation"]: r for r in records if r["mode"] == "none"}
    for r in records:
        b = base[r["federation"]]
        eps = "inf" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        f1 = f"{r['f1']:.3f}" if "f1" in r else "-"
        lines.append(
            f"| {r['federation']} | {r['mode']} | {eps} | {r['accuracy']:.3f} | {f1} | {r['round_seconds']:.2f} | "
            f"{r['round_seconds'] / b['round_seconds']:.2f} | {r['bytes_sent_per_site_round'] / 1e3:.1f} | "
            f"{r['bytes_sent_per_site_round'] / b['bytes_sent_per_site_round']:.2f} | "
            f"{r['bytes_received_per_site_round'] / 1e3:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    from mledge.onsite.profiles import PROFILES
    from mledge.onsite.store import append_generated_batch

    started = time.perf_counter()
    records = []
    run_digits("warm-up", MODES[0][1], rounds=1)  # imports and first-call costs out of the none row
    for name, options in MODES:
        records.append(repeated(lambda name=name, options=options: run_digits(name, options), options))
        print(json.dumps(records[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        for site, profile in PROFILES.items():
            stores[site] = Path(tmp) / site
            for _ in range(2):
                append_generated_batch(stores[site], profile, rows=600)
        run_axis("warm-up", MODES[0][1], stores, rounds=1)
        for name, options in MODES:
            records.append(repeated(lambda name=name, options=options: run_axis(name, options, stores), options))
            print(json.dumps(records[-1]), flush=True)
    total = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"seconds": total, "cpus": os.cpu_count(), "python": platform.python_version()}
    (args.out / "privacy.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
    (args.out / "privacy.md").write_text(
        "# Privacy benchmark (`make bench-privacy`)\n\n" + table(records)
        + f"\n\ndp and secagg-dp rows: mean of {REPEATS} runs (fresh noise each); every run is in privacy.json."
        + f"\n\nWhole benchmark: {total:.0f} s on {os.cpu_count()} CPUs. Method: bench/privacy.py.\n"
    )
    print(table(records))


if __name__ == "__main__":
    main()

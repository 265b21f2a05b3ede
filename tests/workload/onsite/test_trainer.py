"""A site's long-lived trainer (mledge/onsite/trainer.py) behind the ClientApp (fl/clientapp.py): the real
``mledge sites trainer`` process on a generated store, reached through its Unix socket.

One trainer process serves the module (its warm-up imports torch once); it is started in a session of its own and
stopped by its PID. Tests that change the store come last and compare against what the store holds then.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

import fl.clientapp as clientapp
from fl.model import build_model
from fl.serverapp import TrainResult, exchange
from fl.simulation.harness import InProcessGrid
from mledge.onsite import trainer_client
from mledge.onsite.profiles import PROFILES
from mledge.onsite.store import append_generated_batch, batch_paths, is_held_out, load_site_data
from mledge.onsite.trainer_client import TRAINER_KEY, TrainerFailed, TrainerUnavailable
from mledge.onsite.training import is_validation
from mledge.ops import identities

ROWS = 300
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="Unix users need root (CI runs as root)")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, bin_dir, wait_until):
    """plant_a's trainer on a store of two batches; its socket in a short private folder (socket paths are short)."""
    root = tmp_path_factory.mktemp("trainer")
    store = root / "plant_a"
    for _ in range(2):
        append_generated_batch(store, PROFILES["plant_a"], rows=ROWS)
    base = Path(tempfile.mkdtemp(prefix="mledge-t-", dir="/tmp"))
    path = base / "trainer" / "trainer.sock"
    env = {**os.environ, "MLEDGE_HOME": str(root / "home")}  # never a running stack's home (and its users)
    with open(root / "trainer.log", "wb") as log:
        process = subprocess.Popen(
            [str(bin_dir / "mledge"), "sites", "trainer", "--site", "plant_a", "--store", str(store),
             "--socket", str(path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the trainer exited {process.returncode}:\n{(root / 'trainer.log').read_text()}")
        return trainer_client.ready(path, "plant_a")

    try:
        wait_until("the trainer warmed up", ready, timeout=300)
        yield {"store": store, "socket": path, "base": base, "process": process, "log": root / "trainer.log"}
    finally:
        _stop(process)
        shutil.rmtree(base, ignore_errors=True)


def node_config(store: Path, site: str = "plant_a", socket_path: Path | None = None) -> dict:
    config = {"site": site, "data-dir": str(store)}
    return {**config, TRAINER_KEY: str(socket_path)} if socket_path else config


def context_for(config: dict, state: RecordDict | None = None) -> Context:
    return Context(run_id=42, node_id=7, node_config=config, state=state or RecordDict(), run_config={})


def train_content(seed: int = 3) -> RecordDict:
    config = ConfigRecord({"local-epochs": 1, "learning-rate": 0.01, "server-round": 2})
    return RecordDict({"arrays": ArrayRecord(build_model(seed=seed).state_dict()), "config": config})


def finalise_content() -> RecordDict:
    config = ConfigRecord({"learning-rate": 0.01, "personal-epochs": 1, "recent-batches": 1})
    return RecordDict({"arrays": ArrayRecord(build_model(seed=4).state_dict()), "config": config,
                       "champion": ArrayRecord(build_model(seed=5).state_dict())})


def _same_reply(warm: Message, here: Message) -> None:
    assert warm.metadata.reply_to_message_id == here.metadata.reply_to_message_id
    assert sorted(warm.content.keys()) == sorted(here.content.keys())
    a, b = warm.content["arrays"].to_torch_state_dict(), here.content["arrays"].to_torch_state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = dict(warm.content["metrics"]), dict(here.content["metrics"])
    ma.pop("compute-seconds"), mb.pop("compute-seconds")
    assert ma == mb
    assert dict(warm.content["site"]) == dict(here.content["site"]) == {"site": "plant_a"}


def test_a_forwarded_message_is_answered_exactly_as_the_handler_answers_in_process(trainer, instruction):
    store, path = trainer["store"], trainer["socket"]
    served = trainer_client.status(path)["served"]
    for content, kind in ((train_content(), "train"), (finalise_content(), "train.finalise")):
        message = instruction(content, 7, kind)
        warm = clientapp.app(message, context_for(node_config(store, socket_path=path)))
        here = clientapp.app(message, context_for(node_config(store)))
        _same_reply(warm, here)
        if kind == "train.finalise":
            assert dict(warm.content["window"]) == dict(here.content["window"])
    # Both ran in the trainer (the in-process replies above ran here, without the trainer key).
    assert trainer_client.status(path)["served"] == served + 2


def test_the_context_state_goes_to_the_trainer_and_comes_back(trainer, instruction):
    state = RecordDict({"kept": ConfigRecord({"rounds-seen": 3})})
    context = context_for(node_config(trainer["store"], socket_path=trainer["socket"]), state)
    reply, back = trainer_client.call(trainer["socket"], instruction(train_content(), 7, "train"), context,
                                      site="plant_a")
    assert not reply.has_error() and reply.content["metrics"]["num-examples"] > 0
    assert dict(back["kept"]) == {"rounds-seen": 3}


def test_a_trainer_serves_its_own_site_and_store_only(trainer, instruction, tmp_path):
    message = instruction(train_content(), 7, "train")
    for config, says in (
        (node_config(trainer["store"], "plant_b", trainer["socket"]), "serves plant_a, not 'plant_b'"),
        (node_config(tmp_path, "plant_a", trainer["socket"]), "serves the store"),
    ):
        with pytest.raises(TrainerFailed, match=says) as err:
            clientapp.app(message, context_for(config))
        assert "site plant_a" in str(err.value)


def test_a_query_is_answered_by_the_clientapp_even_when_the_trainer_is_down(tmp_path, instruction):
    config = node_config(tmp_path, "plant_b", tmp_path / "trainer.sock")  # nothing listens there
    reply = clientapp.app(instruction(RecordDict(), 7, "query"), context_for(config))
    assert reply.content["site"]["site"] == "plant_b"


def test_a_dead_trainer_gives_an_error_naming_the_site(instruction):
    base = Path(tempfile.mkdtemp(prefix="mledge-t-", dir="/tmp"))
    try:
        missing = base / "none.sock"
        stale = base / "stale.sock"  # a socket file whose trainer is gone: nothing accepts on it
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
            gone.bind(str(stale))
        for path, cause in ((missing, "no socket there"), (stale, "connection refused")):
            with pytest.raises(TrainerUnavailable) as err:
                clientapp.app(instruction(train_content(), 7, "train"), context_for(node_config(base, "plant_b", path)))
            assert str(err.value).startswith("site plant_b: its trainer does not answer")
            assert cause in str(err.value) and "trainer-plant_b" in str(err.value)
    finally:
        shutil.rmtree(base)


def test_the_serverapp_records_the_site_whose_trainer_is_down(trainer):
    """Through the ServerApp's own exchange: plant_a's trainer answers, plant_c's is down; the round goes on with
    plant_a and records plant_c's failure by name (the ClientApp answers the ServerApp's query itself)."""
    dead = Path(tempfile.mkdtemp(prefix="mledge-t-", dir="/tmp")) / "trainer.sock"
    nodes = {11: node_config(trainer["store"], "plant_a", trainer["socket"]),
             12: node_config(trainer["store"], "plant_c", dead)}
    try:
        with InProcessGrid(clientapp.app, nodes) as grid:
            messages = [Message(train_content(), dst_node_id=n, message_type="train") for n in nodes]
            result = TrainResult(arrays=messages[0].content["arrays"])
            ok, failed = exchange(grid, messages, result, timeout=60, what="train", rnd=1, check=lambda m, w: [])
    finally:
        shutil.rmtree(dead.parent)
    assert sorted(ok) == ["plant_a"]
    assert list(failed) == ["plant_c"] and "site plant_c: its trainer does not answer" in failed["plant_c"]
    assert result.failures["plant_c"][0].startswith("round 1 train: ")


def test_the_socket_is_private_to_the_trainers_user(trainer):
    folder, path = trainer["socket"].parent, trainer["socket"]
    assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == os.geteuid()
    assert path.is_socket() and path.stat().st_mode & 0o777 == 0o600


# Run with the system's interpreter as another user: connect, ask for the status, print what happened.
_KNOCK = """
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"errno": e.errno})); sys.exit(0)
body = json.dumps({"protocol": 1, "op": "status"}).encode()
try:
    s.sendall(struct.pack(">I", len(body)) + body)
except BrokenPipeError:
    pass  # refused before the request was read: the answer is still there to read
size = struct.unpack(">I", s.recv(4))[0]
data = b""
while len(data) < size:
    data += s.recv(size - len(data))
print(json.dumps({"errno": 0, "answer": json.loads(data)}))
"""


def _knock_as(account: identities.Account, path: Path) -> dict:
    import json

    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    done = subprocess.run([python, "-c", _KNOCK, str(path)], user=account.uid, group=account.gid, extra_groups=[],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@root_only
def test_another_sites_user_cannot_reach_the_trainer(trainer):
    other = identities.ensure_user(identities.site_user("plant_b"))
    base, folder, path = trainer["base"], trainer["socket"].parent, trainer["socket"]
    os.chmod(base, 0o711)  # the way there is open: only the trainer's own folder stands in the way
    try:
        assert _knock_as(other, path) == {"errno": errno.EACCES}
        # Were the folder and socket opened by mistake, the trainer still refuses a peer that is not its user.
        os.chmod(folder, 0o711)
        os.chmod(path, 0o666)
        answer = _knock_as(other, path)["answer"]
        assert answer["ok"] is False and answer["error_type"] == "PermissionError"
        assert f"uid {other.uid} may not use this site's trainer" in answer["error"]
    finally:
        os.chmod(path, 0o600)
        os.chmod(folder, 0o700)
        os.chmod(base, 0o700)
    assert trainer_client.ready(path)  # and it serves its own site as before


def _examples(store: Path) -> int:
    frame = load_site_data(store, "plant_a")
    return int((~is_held_out(frame) & ~is_validation(frame)).sum())  # the training rows


def test_batches_are_held_by_content_and_read_again_when_the_store_changes(trainer, instruction):
    store, path = trainer["store"], trainer["socket"]
    config = node_config(store, socket_path=path)

    def train() -> Message:
        return clientapp.app(instruction(train_content(), 7, "train"), context_for(config))

    def counts() -> dict:
        return trainer_client.status(path)["batches"]

    batches = len(batch_paths(store))
    before = counts()
    assert train().content["metrics"]["num-examples"] == _examples(store)
    after = counts()
    assert after["misses"] == before["misses"] and after["hits"] == before["hits"] + batches  # nothing re-read

    append_generated_batch(store, PROFILES["plant_a"], rows=ROWS)  # the store changes: one new batch
    assert train().content["metrics"]["num-examples"] == _examples(store)
    grown = counts()
    assert grown["misses"] == after["misses"] + 1 and grown["hits"] == after["hits"] + batches

    first = batch_paths(store)[0]
    original = first.read_bytes()
    first.write_bytes(original.replace(b",L,", b",Q,", 1))  # rewritten in place, same name: new content
    try:
        with pytest.raises(TrainerFailed) as err:
            train()
        assert "site plant_a" in str(err.value) and str(first) in str(err.value)
        assert "unknown product types ['Q']" in str(err.value)
    finally:
        first.write_bytes(original)
    restored = counts()
    assert train().content["metrics"]["num-examples"] == _examples(store)
    # The original bytes are still held: nothing parsed again.
    assert counts()["misses"] == restored["misses"]


def test_training_runs_on_the_device_the_trainer_chose(monkeypatch):
    """The warm trainer exports its device (cuda when torch sees a GPU); training runs there and hands the model
    back on the CPU. Without a GPU, asking for cuda fails in torch, which shows the setting is obeyed."""
    import numpy as np
    import torch

    from fl.model import build_model
    from mledge.contracts import TORCH_DEVICE_ENV
    from mledge.onsite.schema import N_FEATURES
    from mledge.onsite.training import train_local

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, N_FEATURES)).astype(np.float32)
    y = (rng.random(256) < 0.2).astype(np.float32)
    monkeypatch.setenv(TORCH_DEVICE_ENV, "cpu")
    on_cpu = build_model(seed=1)
    cpu_loss = train_local(on_cpu, x, y, epochs=2, lr=0.01)
    monkeypatch.setenv(TORCH_DEVICE_ENV, "cuda")
    model = build_model(seed=1)
    if not torch.cuda.is_available():
        with pytest.raises((AssertionError, RuntimeError), match="(?i)cuda"):
            train_local(model, x, y, epochs=2, lr=0.01)
        return
    gpu_loss = train_local(model, x, y, epochs=2, lr=0.01)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-3)

"""A site's long-lived trainer: the site's ClientApp handlers, run in one warm process next to its SuperNode.

Flower starts a fresh ``flwr-clientapp`` process for every message, and ours paid for torch, pandas and reading
every batch again each time (seconds per message). The trainer pays once: it loads the ClientApp (fl/clientapp.py)
and everything its handlers use, warms torch up, and then runs each message the ClientApp forwards
(mledge/onsite/trainer_client.py) through the very same ``ClientApp`` object, so whatever handlers and model
families it has run here unchanged. Started by the stack (``trainer-<site>``, as the site's own user, in the site's
home) or by hand with ``mledge sites trainer --site <site>``.

- Reachable only from the site: a Unix socket in the site's home, in a folder of mode 0700 owned by the site's
  user (the socket itself 0600), and the peer's uid checked on every connection (the site's own user, or root).
- One site: a request for another site, or for another store, is refused.
- Parsed batches stay in memory, keyed by content (SHA-256 of the file's bytes): a new batch, or a batch whose
  bytes changed, is read again through ``mledge.onsite.store.read_batch`` (validation and the store's own parse
  cache on disk); unchanged batches are not parsed, validated or even loaded from disk again.
- The device: ``cuda`` when torch sees a GPU, else ``cpu``, exported as ``MLEDGE_TORCH_DEVICE`` and shown in the
  status; mledge/onsite/training.py does not read it yet, so training runs on the CPU.
- Messages run one at a time; a status request is answered at once, also while warming up or training.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import signal
import socket
import socketserver
import stat
import struct
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mledge.contracts import TORCH_DEVICE_ENV
from mledge.onsite import trainer_client as wire

log = logging.getLogger("mledge.trainer")
DEFAULT_APP = "fl.clientapp:app"
# Parsed batches held in memory (a 1,000-row batch is about 100 kB as a frame).
DEFAULT_HELD_BATCHES = 512
DEVICE_ENV = TORCH_DEVICE_ENV
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class TrainerError(RuntimeError):
    """The trainer cannot start or serve as asked; the message says why."""


# --- parsed batches, held by content --------------------------------------------------------------------------


def _digest(path: Path) -> str | None:
    """SHA-256 of a regular file's bytes, read without following a link; None when it is anything else (the
    store's reader then names the problem)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        return hashlib.sha256(handle.read()).hexdigest()


class HeldBatches:
    """Validated batches in this process's memory, by content hash (least recently used dropped first).

    ``read_batch`` has ``mledge.onsite.store.read_batch``'s contract and answers from memory when the file holds
    the same bytes as when it was read; anything else goes through the store's reader.
    """

    def __init__(self, read: Callable[[str, Path], Any], limit: int = DEFAULT_HELD_BATCHES) -> None:
        from mledge.onsite.store import cache_version

        self._read, self.limit = read, limit
        self._version = cache_version()  # validation rules and parser: part of what a held frame means
        self._frames: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def read_batch(self, site: str, path: Path) -> Any:
        digest = _digest(Path(path))
        key = f"{self._version}:{digest}"
        with self._lock:
            frame = self._frames.get(key) if digest else None
            if frame is not None:
                self._frames.move_to_end(key)
                self.hits += 1
                return frame.copy()  # callers may change their frame; the held one stays as read
            self.misses += 1
        frame = self._read(site, path)
        if digest and _digest(Path(path)) == digest:  # unchanged while it was read: the frame is that content
            with self._lock:
                self._frames[key] = frame.copy()
                while len(self._frames) > self.limit:
                    self._frames.popitem(last=False)
        return frame

    def stats(self) -> dict[str, int]:
        return {"held": len(self._frames), "hits": self.hits, "misses": self.misses}


def hold_batches(held: HeldBatches) -> list[str]:
    """Make the site's code in this process read batches through ``held``.

    The training code calls ``read_batch`` under the name it imported from mledge.onsite.store; each loaded site
    module (mledge.onsite.*, fl.*) that holds the store's function gets the held one instead, and so does the store
    itself (``load_site_data``). Returns the modules changed. Only this process is affected.
    """
    from mledge.onsite import store

    original = store.read_batch
    changed = []
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("mledge.onsite.", "fl.")) or name == __name__:
            continue
        if getattr(module, "read_batch", None) is original:
            module.read_batch = held.read_batch
            changed.append(name)
    return changed


# --- the trainer ---------------------------------------------------------------------------------------------


def torch_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``; ``MLEDGE_TORCH_DEVICE`` set by hand wins."""
    chosen = os.environ.get(DEVICE_ENV)
    if chosen:
        return chosen
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _warm_torch() -> None:
    """torch's first optimiser builds lazily (seconds under load): pay for it now, not in the first round."""
    try:
        import torch
    except ImportError:
        return
    layer = torch.nn.Linear(2, 1)
    optimiser = torch.optim.Adam(layer.parameters())
    layer(torch.zeros(1, 2)).sum().backward()
    optimiser.step()


def load_app(reference: str) -> tuple[Any, Any]:
    """``module:attribute`` -> (the module, the ClientApp)."""
    module_name, _, attribute = reference.partition(":")
    module = importlib.import_module(module_name)
    return module, getattr(module, attribute or "app")


class Trainer:
    """One site's handlers, warm: ``handle(message, context)`` runs the ClientApp on them, one message at a time."""

    def __init__(self, site: str, store: Path, app: str = DEFAULT_APP, held_batches: int = DEFAULT_HELD_BATCHES):
        self.site, self.store, self.app_reference = site, Path(store).resolve(), app
        self.held_batches = held_batches
        self.ready = threading.Event()
        self.failed: str | None = None
        self.device = "cpu"
        self.held: HeldBatches | None = None
        self.bound: list[str] = []
        self.served = 0
        self.started = time.time()
        self._app: Any = None
        self._work = threading.Lock()

    def warm_up(self) -> None:
        """Load the ClientApp and all it uses, warm torch, read the store's batches once; then ``ready``."""
        try:
            started = time.perf_counter()
            module, self._app = load_app(self.app_reference)
            loaded = wire.load_deferred(module)
            from mledge.onsite import store

            self.device = torch_device()
            os.environ[DEVICE_ENV] = self.device
            _warm_torch()
            self.held = HeldBatches(store.read_batch, self.held_batches)
            self.bound = hold_batches(self.held)
            for path in store.batch_paths(self.store):
                try:
                    self.held.read_batch(self.site, path)
                except ValueError as exc:  # a bad batch fails its messages, naming it; the trainer still serves
                    log.warning("site %s: %s", self.site, exc)
            log.info(
                "site %s: trainer ready in %.1fs (device %s; loaded %s; batches held %d; read_batch bound in %s)",
                self.site, time.perf_counter() - started, self.device, ", ".join(loaded) or "-",
                self.held.stats()["held"], ", ".join(self.bound) or "-",
            )
        except Exception as exc:
            self.failed = f"{exc.__class__.__name__}: {exc}"
            log.exception("site %s: the trainer could not warm up", self.site)
        finally:
            self.ready.set()

    def _check(self, context: Any) -> None:
        """A request must be for this site and this store: one trainer serves its own site only."""
        named = str(context.node_config.get("site", "")).strip()
        if named != self.site:
            raise TrainerError(f"site {self.site}: this trainer serves {self.site}, not {named or '<unnamed>'!r}")
        data_dir = context.node_config.get("data-dir")
        if data_dir and Path(str(data_dir)).resolve() != self.store:
            raise TrainerError(f"site {self.site}: this trainer serves the store {self.store}, not {data_dir}")

    def handle(self, message: Any, context: Any) -> tuple[Any, Any]:
        """Run the ClientApp on one message; (reply, the Context's state after it)."""
        self.ready.wait()
        if self.failed:
            raise TrainerError(f"site {self.site}: the trainer did not start: {self.failed}")
        self._check(context)
        # Without the trainer key the ClientApp's forwarding steps aside: the handler runs here.
        context.node_config = {k: v for k, v in context.node_config.items() if k != wire.TRAINER_KEY}
        with self._work:
            reply = self._app(message, context)
            self.served += 1
        return reply, context.state

    def status(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "store": str(self.store),
            "ready": self.ready.is_set() and not self.failed,
            "failed": self.failed,
            "device": self.device,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "served": self.served,
            "batches": self.held.stats() if self.held else None,
        }


# --- the socket ------------------------------------------------------------------------------------------------


def peer_uid(sock: socket.socket) -> int:
    _, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return uid


class _Connection(socketserver.BaseRequestHandler):
    server: TrainerServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        trainer = self.server.trainer
        try:
            uid = peer_uid(sock)
            if uid not in (os.getuid(), 0):  # root may anyway; anyone else is not this site
                log.warning("site %s: refused a connection from uid %d", trainer.site, uid)
                self._answer({"ok": False, "error_type": "PermissionError",
                              "error": f"site {trainer.site}: uid {uid} may not use this site's trainer"})
                return
            request = wire.read_header(wire.recv_frame(sock))
            if request.get("protocol") != wire.PROTOCOL:
                raise TrainerError(f"protocol {request.get('protocol')!r}; this trainer speaks {wire.PROTOCOL}")
            if request.get("op") == "status":
                self._answer({"ok": True, "status": trainer.status()})
                return
            if request.get("op") != "handle":
                raise TrainerError(f"unknown request {request.get('op')!r}")
            message = wire.decode_message(wire.recv_frame(sock))
            context = wire.decode_context(wire.recv_frame(sock))
            reply, state = trainer.handle(message, context)
            self._answer({"ok": True}, [wire.encode_message(reply), wire.encode_state(state)])
        except ConnectionError as exc:
            log.warning("site %s: a request broke off: %s", trainer.site, exc)
        except Exception as exc:  # the handler's failure goes back to the ClientApp, which raises it
            log.warning("site %s: %s: %s", trainer.site, exc.__class__.__name__, exc)
            log.debug("traceback", exc_info=True)
            self._answer({"ok": False, "error_type": exc.__class__.__name__, "error": str(exc),
                          "traceback": traceback.format_exc(limit=5)})

    def _answer(self, document: dict, frames: list[bytes] | None = None) -> None:
        try:
            wire.send_frames(self.request, [wire.header({**document, "frames": len(frames or [])}), *(frames or [])])
        except OSError as exc:  # the ClientApp gave up (Flower stopped it): nothing to tell
            log.warning("site %s: could not answer: %s", self.server.trainer.site, exc)


class TrainerServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, trainer: Trainer) -> None:
        self.trainer = trainer
        self.path = Path(path)
        super().__init__(str(path), _Connection, bind_and_activate=False)

    def server_bind(self) -> None:
        prepare_socket_dir(self.path)
        previous = os.umask(0o177)  # the socket is born 0600: never a moment open to others
        try:
            super().server_bind()
        finally:
            os.umask(previous)
        os.chmod(self.path, 0o600)


def prepare_socket_dir(path: Path) -> None:
    """The socket's folder: made 0700 if missing, refused if someone else owns it; a stale socket is removed, a live
    one (another trainer of this site) is refused."""
    wire.check_socket_path(path)
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise TrainerError(f"{folder} is not a folder (a symbolic link is not followed)")
    if info.st_uid != os.getuid():
        raise TrainerError(f"{folder} belongs to uid {info.st_uid}, not to this trainer's user ({os.getuid()})")
    os.chmod(folder, 0o700)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise TrainerError(f"{path} exists and is not a socket: not removed")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left by a trainer that is gone
        else:
            raise TrainerError(f"a trainer already listens at {path}")
        finally:
            probe.close()


def serve(
    site: str,
    store: Path,
    path: Path,
    *,
    app: str = DEFAULT_APP,
    held_batches: int = DEFAULT_HELD_BATCHES,
    on_listening: Callable[[TrainerServer], None] | None = None,
) -> dict[str, Any]:
    """Serve ``site``'s trainer on ``path`` until SIGTERM or SIGINT; the socket is removed on the way out.

    The socket is bound first and answers status requests at once (``ready`` false while warming up); messages
    wait until the warm-up is done. Returns the final status.
    """
    trainer = Trainer(site, store, app, held_batches)
    server = TrainerServer(path, trainer)
    try:
        server.server_bind()
        server.server_activate()
    except BaseException:
        server.server_close()
        raise

    def stop(signum: int, frame: object) -> None:
        log.info("site %s: trainer stopping (signal %d)", site, signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    threading.Thread(target=trainer.warm_up, name=f"warm-up-{site}", daemon=True).start()
    log.info("site %s: trainer listening at %s (pid %d)", site, path, os.getpid())
    if on_listening is not None:
        on_listening(server)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        Path(path).unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return trainer.status()

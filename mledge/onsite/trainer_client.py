"""How a site's ClientApp reaches the site's trainer (mledge/onsite/trainer.py): where its socket is, the wire
format, one call, and the errors that name the site.

The trainer listens on a Unix socket in the site's own home (``<home>/trainer/trainer.sock``; the folder is 0700 and
belongs to the site's user, so no other site and no platform process can connect). One connection carries one
request and its reply, each a sequence of frames (a 4-byte big-endian length, then that many bytes):

    request  "handle": header {"protocol": 1, "op": "handle"}, the Flower Message (protobuf: its type says which
             handler runs, its content the records), the Flower Context (protobuf: node config, run config, state)
    reply    header {"ok": true} or {"ok": false, "error": ..., "error_type": ...}; when ok, the reply Message
             (protobuf: content or a Flower error) and the Context's state after the handler
    request  "status": the header alone; reply: the header with the trainer's status

So the protocol is "(message kind, content records, context) -> reply records": it knows no model family and no
handler. Only protobuf and JSON travel, nothing that runs code when it is read (no pickle).

Standard library at import time (Flower's serialisation is imported by the functions that need it): the ClientApp
process forwards without torch or pandas, and health checks can ping a trainer with a bare interpreter.
"""

from __future__ import annotations

import importlib
import json
import socket
import struct
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwr.app import Context, Message, RecordDict

PROTOCOL = 1
# Node config key (set by the stack, mledge/ops/components.py): the socket of this site's trainer. Without it the
# ClientApp runs the handlers in its own process (tests, the in-process simulation, a site without a trainer).
TRAINER_KEY = "trainer-socket"
SOCKET_DIR, SOCKET_NAME = "trainer", "trainer.sock"
# Linux keeps a Unix socket's path in a 108-byte field, with its terminating NUL.
MAX_SOCKET_PATH = 107
# A request carries a few models; anything near this is not one of ours.
MAX_FRAME = 256 * 1024 * 1024
# Longer than a ServerApp waits for any reply (reply-timeout-s): the round decides when a site is late.
CALL_TIMEOUT_S = 900.0
_LENGTH = struct.Struct(">I")


def socket_path(home: Path) -> Path:
    """The trainer's socket in a site's home."""
    return Path(home) / SOCKET_DIR / SOCKET_NAME


def check_socket_path(path: Path) -> Path:
    if len(str(path).encode()) > MAX_SOCKET_PATH:
        raise ValueError(
            f"the trainer's socket path {path} is {len(str(path).encode())} bytes; Unix sockets take at most "
            f"{MAX_SOCKET_PATH}: choose a shorter MLEDGE_HOME (or MLEDGE_DATA_ROOT)"
        )
    return path


class TrainerUnavailable(RuntimeError):
    """The site's trainer cannot be reached (not running, not ours, or gone mid-call); the message names the site."""

    def __init__(self, site: str, path: Path, cause: str) -> None:
        self.site, self.path = site, path
        super().__init__(
            f"site {site}: its trainer does not answer at {path} ({cause}); is trainer-{site} running "
            "(`mledge stack status`, or `mledge sites trainer --site ...` at the site)?"
        )


class TrainerFailed(RuntimeError):
    """The trainer ran the handler, and the handler failed there; the message is the trainer's, naming the site."""

    def __init__(self, site: str, error_type: str, error: str) -> None:
        self.site, self.error_type = site, error_type
        text = f"{error_type}: {error}"
        super().__init__(text if f"site {site}" in error else f"site {site}: {text}")


# --- frames ----------------------------------------------------------------------------------------------------


def send_frames(sock: socket.socket, frames: Sequence[bytes]) -> None:
    sock.sendall(b"".join(_LENGTH.pack(len(f)) + f for f in frames))


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the other side closed the connection mid-message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> bytes:
    (size,) = _LENGTH.unpack(_exactly(sock, _LENGTH.size))
    if size > MAX_FRAME:
        raise ConnectionError(f"a frame of {size} bytes is larger than any request ({MAX_FRAME})")
    return _exactly(sock, size)


def header(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def read_header(frame: bytes) -> dict[str, Any]:
    document = json.loads(frame)
    if not isinstance(document, dict):
        raise ValueError("a header is a JSON object")
    return document


# --- Flower objects on the wire -------------------------------------------------------------------------------


def encode_message(message: Message) -> bytes:
    from flwr.common.serde import message_to_proto

    return message_to_proto(message).SerializeToString()


def decode_message(data: bytes) -> Message:
    from flwr.common.serde import message_from_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage

    proto = ProtoMessage()
    proto.ParseFromString(data)
    return message_from_proto(proto)


def encode_context(context: Context) -> bytes:
    from flwr.common.serde import context_to_proto

    return context_to_proto(context).SerializeToString()


def decode_context(data: bytes) -> Context:
    from flwr.common.serde import context_from_proto
    from flwr.proto.message_pb2 import Context as ProtoContext

    proto = ProtoContext()
    proto.ParseFromString(data)
    return context_from_proto(proto)


def encode_state(state: RecordDict) -> bytes:
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(state).SerializeToString()


def decode_state(data: bytes) -> RecordDict:
    from flwr.common.serde import recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    proto = ProtoRecordDict()
    proto.ParseFromString(data)
    return recorddict_from_proto(proto)


# --- the client side --------------------------------------------------------------------------------------------


def _connect(path: Path, site: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(check_socket_path(Path(path))))
    except FileNotFoundError:
        sock.close()
        raise TrainerUnavailable(site, path, "no socket there: the trainer is not running") from None
    except ConnectionRefusedError:
        sock.close()
        raise TrainerUnavailable(site, path, "connection refused: the trainer is not running") from None
    except PermissionError:
        sock.close()
        raise TrainerUnavailable(site, path, "permission denied: the socket is not this site's") from None
    except (OSError, ValueError) as exc:
        sock.close()
        raise TrainerUnavailable(site, path, f"{exc.__class__.__name__}: {exc}") from None
    return sock


def _exchange(path: Path, site: str, frames: Sequence[bytes], timeout: float) -> tuple[dict, list[bytes]]:
    """Send one request; the reply's header and its other frames."""
    with _connect(path, site, timeout) as sock:
        try:
            try:
                send_frames(sock, frames)
            except BrokenPipeError:
                pass  # the trainer may have refused us before reading: its answer, still readable, says why
            answer = read_header(recv_frame(sock))
            rest = [recv_frame(sock) for _ in range(int(answer.get("frames", 0)))]
        except (OSError, ValueError) as exc:  # a trainer that died or was stopped mid-call
            raise TrainerUnavailable(site, path, f"{exc.__class__.__name__}: {exc}") from None
    return answer, rest


def call(
    path: Path, message: Message, context: Context, *, site: str, timeout: float = CALL_TIMEOUT_S
) -> tuple[Message, RecordDict]:
    """Have the trainer at ``path`` run the handler for ``message``; its reply and the Context's state after it."""
    request = [header({"protocol": PROTOCOL, "op": "handle"}), encode_message(message), encode_context(context)]
    answer, rest = _exchange(path, site, request, timeout)
    if not answer.get("ok"):
        raise TrainerFailed(site, str(answer.get("error_type", "TrainerError")), str(answer.get("error", "")))
    if len(rest) != 2:
        raise TrainerUnavailable(site, path, f"a reply of {len(rest)} frames, 2 expected")
    return decode_message(rest[0]), decode_state(rest[1])


def status(path: Path, *, site: str = "?", timeout: float = 5.0) -> dict[str, Any]:
    """The trainer's status (``ready``: warmed up and serving; which site; its cache); TrainerUnavailable if none."""
    answer, _ = _exchange(path, site, [header({"protocol": PROTOCOL, "op": "status"})], timeout)
    if not answer.get("ok"):
        raise TrainerFailed(site, str(answer.get("error_type", "TrainerError")), str(answer.get("error", "")))
    return answer["status"]


def ready(path: Path, site: str = "?") -> bool:
    """Whether a trainer answers at ``path`` and has warmed up (a health check)."""
    try:
        return bool(status(path, site=site).get("ready"))
    except (TrainerUnavailable, TrainerFailed):
        return False


# --- heavy modules on first use ------------------------------------------------------------------------------


class Deferred:
    """A module imported when one of its attributes is first used.

    The ClientApp process only forwards to the trainer: the modules its handlers need (torch, pandas through the
    site's training code) would cost seconds per message there. The trainer loads them all at start
    (``load_deferred``); a ClientApp without a trainer loads them on its first message.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def load(self) -> ModuleType:
        return importlib.import_module(self._name)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.load(), attribute)

    def __repr__(self) -> str:
        return f"<deferred module {self._name!r}>"


def load_deferred(module: ModuleType) -> list[str]:
    """Import every deferred module ``module`` names; returns their names."""
    loaded = []
    for value in list(vars(module).values()):
        if isinstance(value, Deferred):
            loaded.append(value.load().__name__)
    return loaded

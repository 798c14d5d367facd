"""What a pyrokv daemon refuses before it decodes or uses a request.

Pyro5 decodes a call's body (``serpent.loads``, which builds a Python syntax tree of
the whole body) before anything looks at it, and turns some dicts in it into live
Pyro5 objects. So, process-wide, for the daemons of ``pyrokv node`` and
``pyrokv nameserver`` (:func:`guard_daemons`):

- a message larger than ``max_message`` is refused from its header (Pyro5's
  ``MAX_MESSAGE_SIZE``), before its body is read;
- a compressed message is refused from its header (pyrokv never compresses, and
  Pyro5 would inflate it before anything could look at it);
- a body with more than :data:`MAX_STRUCTURE` bytes outside its string literals is
  refused before it is decoded: decoding costs at most about 500 bytes of memory
  per such byte here (a list of zeros, a chain of ``<`` or ``+``), so the bound
  keeps one message under about 64 MiB and 200 ms however it is built, while a
  legitimate batch (mostly strings) passes at any size up to ``max_message``;
- every serializer but serpent is refused (:func:`pyrokv.wire.accept_serpent_only`);
- a Pyro5 proxy, daemon or serializer object in any message is refused as it is
  decoded (a proxy argument would make the node dial out when it is used), and on
  nodes a URI in a request too (nodes take none; the name server's ``register``
  does).

:func:`check_path`, :func:`check_budget`, :func:`check_items` and :func:`check_runs`
then check the arguments of ``TaskRunner.route``/``route_batch``/``route_runs`` before
they are used.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Sequence
from typing import Any

from .defaults import DEFAULT_MAX_MESSAGE
from .errors import TaskArgumentError
from .logs import RateLimited
from .table import check_node_name

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "MAX_STRUCTURE",
    "check_args",
    "check_budget",
    "check_items",
    "check_kwargs",
    "check_path",
    "check_runs",
    "check_version",
    "guard_daemons",
    "structure_size",
]

log = logging.getLogger("pyrokv.guard")

#: The most bytes outside string literals one body may have.
MAX_STRUCTURE = 128 * 1024
#: The longest path a request may carry (its hop limit is checked by routing).
MAX_PATH = 64
#: The longest node name a path may hold.
MAX_NODE_NAME = 255

_STRINGS = re.compile(rb"'[^'\\]*(?:\\.[^'\\]*)*'|\"[^\"\\]*(?:\\.[^\"\\]*)*\"")
_REFUSED = ("Pyro5.client.Proxy", "Pyro5.server.Daemon")
_REFUSED_PREFIXES = ("Pyro5.util.",)
_decoding_request = threading.local()
_installed = threading.Lock()
_done: dict[str, bool] = {}


def structure_size(body: bytes) -> int:
    """Bytes of a serpent ``body`` outside its string literals: what decoding costs."""
    return len(_STRINGS.sub(b"", body))


def guard_daemons(max_message: int = DEFAULT_MAX_MESSAGE, *, refuse_uris: bool) -> None:
    """Install the checks above in this process; ``refuse_uris`` on nodes.

    Process-wide; a second call changes only ``max_message``.
    """
    import Pyro5.api
    from Pyro5 import errors, protocol, serializers

    from .wire import accept_serpent_only

    Pyro5.api.config.MAX_MESSAGE_SIZE = int(max_message)
    with _installed:
        if _done.get("installed"):
            _done["refuse_uris"] = refuse_uris
            return
        _done["installed"] = True
        _done["refuse_uris"] = refuse_uris
    accept_serpent_only()
    checked = (protocol.MSG_CONNECT, protocol.MSG_INVOKE)
    original = protocol.recv_stub

    def recv_stub(connection: Any, accepted_msgtypes: Any = None) -> Any:
        msg = original(connection, accepted_msgtypes)
        if msg.type in checked and len(msg.data) > MAX_STRUCTURE:
            size = structure_size(bytes(msg.data))
            if size > MAX_STRUCTURE:
                _refusals.note(
                    f"a Pyro5 message with {size} bytes outside its strings (at most "
                    f"{MAX_STRUCTURE}) from {_peer(connection)}"
                )
                raise errors.SecurityError(
                    f"pyrokv refuses a message with {size} bytes outside its strings "
                    f"(at most {MAX_STRUCTURE}): split it into smaller calls"
                )
        return msg

    protocol.recv_stub = recv_stub
    header_check = protocol.ReceivingMessage.__init__

    def receiving_message(self: Any, header: Any, payload: Any = None) -> None:
        header_check(self, header, None)  # Pyro5's own checks: magic, version, size
        if self.flags & protocol.FLAGS_COMPRESSED:
            raise errors.SecurityError(
                "pyrokv refuses compressed messages: turn COMPRESSION off"
            )
        if payload is not None:
            self.add_payload(payload)

    protocol.ReceivingMessage.__init__ = receiving_message

    def refuse(classname: str, _data: dict[str, Any]) -> Any:
        raise errors.SecurityError(
            f"pyrokv refuses a {classname} object in a message: send plain data"
        )

    for name in _REFUSED:
        serializers.SerializerBase.register_dict_to_class(name, refuse)
    for name in ("SerpentSerializer", "MarshalSerializer", "JsonSerializer"):
        serializers.SerializerBase.register_dict_to_class(
            f"{_REFUSED_PREFIXES[0]}{name}", refuse
        )
    serializers.SerializerBase.register_dict_to_class("Pyro5.core.URI", _uri)
    serpent_class = serializers.SerpentSerializer
    loads_call = serpent_class.loadsCall

    def guarded_loads_call(self: Any, data: Any) -> Any:
        _decoding_request.active = True
        try:
            return loads_call(self, data)
        finally:
            _decoding_request.active = False

    serpent_class.loadsCall = guarded_loads_call


def _uri(classname: str, data: dict[str, Any]) -> Any:
    """Rebuild a URI as Pyro5 does; refused in a request to a node."""
    from Pyro5 import core, errors

    if _done.get("refuse_uris") and getattr(_decoding_request, "active", False):
        raise errors.SecurityError(
            "pyrokv nodes refuse a Pyro5 URI in a request: send plain data"
        )
    uri = core.URI.__new__(core.URI)
    uri.__setstate__(data["state"])
    return uri


_refusals = RateLimited(log)


def _peer(connection: Any) -> str:
    try:
        return str(connection.sock.getpeername())
    except OSError:
        return "?"


# -- the arguments of a routed request ---------------------------------------------


def check_path(path: object) -> list[str]:
    """``path`` as a list of node names; :class:`TaskArgumentError` if it is not one."""
    if not isinstance(path, (list, tuple)) or len(path) > MAX_PATH:
        raise TaskArgumentError(
            f"path must be a list of at most {MAX_PATH} node names, not "
            f"{type(path).__name__}"
        )
    try:
        names = [check_node_name(node) for node in path]
    except Exception:
        raise TaskArgumentError("path must hold node names only") from None
    if any(len(name) > MAX_NODE_NAME for name in names):
        raise TaskArgumentError(
            f"path holds a node name longer than {MAX_NODE_NAME} characters"
        )
    return names


def check_budget(budget: object) -> float | None:
    """``budget`` as seconds (None: no budget); a finite number that is not negative."""
    if budget is None:
        return None
    try:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise TypeError
        seconds = float(budget)
    except (TypeError, OverflowError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise TaskArgumentError(
            f"budget must be a finite number of seconds, not {budget!r:.40}"
        )
    return seconds


def check_version(version: object) -> int | None:
    """A table version a request carries: None, or an int in 0..2**62."""
    if version is None:
        return None
    if type(version) is not int or not 0 <= version <= 2**62:
        raise TaskArgumentError(
            f"a table version is a number 0..2**62, not {version!r:.40}"
        )
    return version


def check_args(args: object) -> Sequence[Any]:
    """A task's positional arguments: a list or tuple."""
    if not isinstance(args, (list, tuple)):
        raise TaskArgumentError(f"args must be a list, not {type(args).__name__}")
    return args


def check_kwargs(kwargs: object) -> dict[str, Any] | None:
    """A task's keyword arguments: None, or a dict whose keys are text."""
    if kwargs is None:
        return None
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise TaskArgumentError("kwargs must be a dict with text keys")
    return kwargs


def check_items(items: object) -> list[tuple[Any, str, Sequence[Any]]]:
    """``items`` of a batch as (bucket, func, args) triples, checked."""
    if not isinstance(items, (list, tuple)):
        raise TaskArgumentError("items must be a list of [bucket, func, args]")
    checked: list[tuple[Any, str, Sequence[Any]]] = []
    for item in items:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 3
            or not isinstance(item[0], (str, bytes))
            or not isinstance(item[1], str)
            or not isinstance(item[2], (list, tuple))
        ):
            raise TaskArgumentError(
                "each item must be [bucket (str), func (str), args (list)]"
            )
        checked.append((item[0], item[1], item[2]))
    return checked


def check_runs(runs: object) -> list[tuple[Any, str, Sequence[Any]]]:
    """A client pipeline's ``runs`` (see :meth:`pyrokv.TaskRunner.route_runs`) as
    (bucket, func, args) triples, checked: each run is ``[func, width, flat]``, and
    every ``width`` arguments of ``flat`` are one call, whose bucket is the first."""
    if not isinstance(runs, (list, tuple)):
        raise TaskArgumentError("runs must be a list of [func, width, args]")
    checked: list[tuple[Any, str, Sequence[Any]]] = []
    for run in runs:
        if (
            not isinstance(run, (list, tuple))
            or len(run) != 3
            or not isinstance(run[0], str)
            or type(run[1]) is not int
            or run[1] < 1
            or not isinstance(run[2], (list, tuple))
            or len(run[2]) % run[1]
        ):
            raise TaskArgumentError(
                "each run must be [func (str), width (int >= 1), args (a list of "
                "width arguments per call)]"
            )
        func, width, flat = run
        for start in range(0, len(flat), width):
            args = flat[start : start + width]
            if not isinstance(args[0], (str, bytes)):
                raise TaskArgumentError(
                    "the first argument of each call in a run is its bucket: str or bytes"
                )
            checked.append((args[0], func, args))
    return checked

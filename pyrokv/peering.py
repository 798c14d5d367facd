"""How two nodes prove to each other that they belong to one cluster. Pure.

A node that opens a peer link to another node's text port (see
:mod:`pyrokv.peer`) and the node that accepts it both hold the cluster's secret.
Before any ``FWD`` line is accepted, each proves it holds the secret by an HMAC of
a fresh nonce the other one chose (a challenge-response both ways), so a sniffed
answer is worth nothing on another connection, and a process that took over a
node's name in the name server cannot pass for that node::

    opener -> owner:  PEER <opener's name> <nonce A>
    owner -> opener:  PEER <owner's name> <nonce B> <proof of the owner>
    opener -> owner:  PROVE <proof of the opener>
    owner -> opener:  OK                      (now FWD lines are accepted)

The owner's proof covers nonce A, its name, nonce B and the address of its text
port; the opener's covers nonce B, its name and nonce A; the two roles use
different labels, so one cannot be replayed as the other. Because the owner's
proof names its address, a process that took over the owner's name in the name
server (and so is dialled at its own address) cannot pass the owner's proof on.
The frames that follow are not authenticated one by one: a network that can
rewrite traffic between two nodes' addresses needs TLS (docs/security.md). A node with no secret answers ``PEER`` with
``UNKNOWN COMMAND``, like any line it does not know.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat

from .errors import ConfigError, ProtocolError
from .table import check_node_name

__all__ = [
    "NONCE_BYTES",
    "PEER",
    "PROVE",
    "hello",
    "new_nonce",
    "parse_hello",
    "proof",
    "prove_line",
    "read_secret",
    "verify",
]

PEER = b"PEER"
PROVE = b"PROVE"
#: Bytes of randomness in each nonce.
NONCE_BYTES = 16
_OPENER = b"pyrokv peer opener"
_OWNER = b"pyrokv peer owner"


def new_nonce() -> bytes:
    """A fresh nonce, as the hex text that goes on the line."""
    return secrets.token_hex(NONCE_BYTES).encode("ascii")


def proof(
    secret: bytes,
    opener: bool,
    challenge: bytes,
    name: str,
    nonce: bytes,
    address: str = "",
) -> bytes:
    """The proof (hex) that ``name`` holds ``secret``, answering ``challenge``.

    ``opener`` says which side proves: the node that opened the link, or the owner
    of the port. ``nonce`` is the prover's own nonce, bound in as well. The owner
    binds ``address``, the ``HOST:PORT`` of its text port as it registers it: an
    opener checks it against the address it dialled, so a process that took over
    the owner's name cannot relay the owner's proof from another address.
    """
    label = _OPENER if opener else _OWNER
    message = b"\0".join(
        [label, challenge, name.encode("ascii"), nonce, address.encode("ascii")]
    )
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode("ascii")


def verify(expected: bytes, given: bytes) -> bool:
    """Whether ``given`` is ``expected``, compared in constant time."""
    return hmac.compare_digest(expected, given)


def hello(name: str, nonce: bytes, owner_proof: bytes | None = None) -> bytes:
    """The ``PEER`` line: the opener's (no proof) or the owner's answer (with its proof)."""
    words = [PEER, name.encode("ascii"), nonce]
    if owner_proof is not None:
        words.append(owner_proof)
    return b" ".join(words) + b"\r\n"


def prove_line(opener_proof: bytes) -> bytes:
    """The opener's ``PROVE`` line."""
    return PROVE + b" " + opener_proof + b"\r\n"


def parse_hello(words: list[bytes], with_proof: bool) -> tuple[str, bytes, bytes]:
    """(name, nonce, proof or b"") from a ``PEER`` line's words.

    Raises :class:`ProtocolError` naming the field that is malformed.
    """
    if len(words) != (4 if with_proof else 3) or words[0] != PEER:
        raise ProtocolError(
            "PEER needs <name> <nonce>" + (" <proof>" if with_proof else "")
        )
    try:
        name = check_node_name(words[1].decode("ascii"))
    except Exception:
        raise ProtocolError(f"PEER name {words[1][:60]!r} is not a node name") from None
    nonce = words[2]
    if len(nonce) != 2 * NONCE_BYTES or not _is_hex(nonce):
        raise ProtocolError("PEER nonce is not 32 hex digits")
    given = words[3] if with_proof else b""
    if with_proof and (len(given) != 64 or not _is_hex(given)):
        raise ProtocolError("PEER proof is not 64 hex digits")
    return name, nonce, given


def _is_hex(text: bytes) -> bool:
    return all(c in b"0123456789abcdef" for c in text)


def read_secret(path: str) -> bytes:
    """The cluster secret in file ``path``: its bytes, without surrounding whitespace.

    Raises :class:`ConfigError` naming the file when it cannot be read, is empty, or
    is shorter than 16 bytes. A file that others may read is accepted; the caller
    may warn about it (:func:`exposed`).
    """
    try:
        with open(path, "rb") as file:
            secret = file.read(1 << 16).strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the cluster secret file {path}: {exc.strerror or exc}"
        ) from None
    if len(secret) < 16:
        raise ConfigError(
            f"the cluster secret file {path} holds {len(secret)} bytes: give it at "
            "least 16 random bytes, for example: "
            "python3 -c 'import secrets; print(secrets.token_hex(32))' > FILE"
        )
    return secret


def exposed(path: str) -> bool:
    """Whether users other than the owner may read the file at ``path``."""
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False

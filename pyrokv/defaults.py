"""Every built-in default of a pyrokv setting, written once.

Low in the import graph (it imports nothing): the setting declarations in
:mod:`pyrokv.settings` and the keyword defaults of the runtime (``start_node``,
``Router``, ``TextServer``, ``TaskRunner``) read the same constants, so a default
changed here changes everywhere. docs/cli.md lists them; a test keeps it in step.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_ALLOW",
    "DEFAULT_CHANGE_TIMEOUT",
    "DEFAULT_CONFIG",
    "DEFAULT_EVENT_LOOP",
    "DEFAULT_FSYNC",
    "DEFAULT_HOP_LIMIT",
    "DEFAULT_HOST",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_MESSAGE",
    "DEFAULT_NODES",
    "DEFAULT_NS",
    "DEFAULT_NS_WAIT",
    "DEFAULT_PORT",
    "DEFAULT_TABLE",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WORKERS",
    "EVENT_LOOPS",
    "FSYNC_MODES",
]

#: The file read when no --config is given, if it exists in the working directory.
DEFAULT_CONFIG = "nameserver.conf"

#: [nameserver] host and port: where the name server listens and everyone looks.
DEFAULT_NS: tuple[str, int] = ("127.0.0.1", 9090)

#: [cluster] table: the guide's two nodes.
DEFAULT_TABLE = "a..m=foo, n..z=bar"
#: [cluster] timeout: longest a routed request may take, across all its hops (s).
DEFAULT_TIMEOUT = 5.0
#: [cluster] hop_limit: how often a request may be forwarded.
DEFAULT_HOP_LIMIT = 16
#: [cluster] ns_wait: how long ``pyrokv node`` waits for its name server to come
#: up before it gives up (s); the Python API (``start_node``) does not wait.
DEFAULT_NS_WAIT = 30.0

#: [node NAME] host and port: the address a node's Pyro5 daemon binds (0: any port).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 0
#: [node NAME] allow: the task modules every node runs; the setting adds to these.
DEFAULT_ALLOW: tuple[str, ...] = ("pyrokv.tasks",)
#: [node NAME] max_line: longest request line of the text protocol (bytes).
DEFAULT_MAX_LINE = 64 * 1024
#: [node NAME] idle_timeout: a text connection idle this long is closed (s).
DEFAULT_IDLE_TIMEOUT = 300.0
#: [node NAME] workers: Pyro5 worker threads; each connection into a node holds one.
DEFAULT_WORKERS = 256

#: [node NAME] fsync: when a write to a node with a data dir is acknowledged:
#: ``always`` (on disk), ``everysec`` (applied; on disk within about a second), ``no``.
DEFAULT_FSYNC = "everysec"
#: Every value of [node NAME] fsync.
FSYNC_MODES: tuple[str, ...] = ("always", "everysec", "no")

#: [node NAME] event_loop: the text server's event loop: ``auto`` (uvloop when it
#: is installed, else asyncio's), ``asyncio`` or ``uvloop``.
DEFAULT_EVENT_LOOP = "auto"
#: Every value of [node NAME] event_loop.
EVENT_LOOPS: tuple[str, ...] = ("auto", "asyncio", "uvloop")

#: [node NAME] and [nameserver] max_message: the largest Pyro5 message a daemon
#: accepts (bytes); a larger one is refused from its header.
DEFAULT_MAX_MESSAGE = 8 * 1024 * 1024

#: The nodes ``pyrokv up`` starts when the config has no [node NAME] section:
#: name and text-protocol address (their other settings take the defaults above).
DEFAULT_NODES: tuple[tuple[str, tuple[str, int]], ...] = (
    ("foo", ("127.0.0.1", 4040)),
    ("bar", ("127.0.0.1", 4041)),
)

#: How long ``pyrokv table set`` waits for a change to complete, in seconds.
DEFAULT_CHANGE_TIMEOUT = 60.0

"""One signal handling: SIGTERM, SIGINT and SIGHUP stop node, name server and up alike."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from pyrokv import naming
from pyrokv.cluster import spawn_nameserver, spawn_node
from pyrokv.signals import STOP_SIGNALS, StopSignals


@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_stop_signals_set_the_event_and_restore_the_handlers(
    sig: signal.Signals,
) -> None:
    """Inside StopSignals a stop signal sets the event; leaving it puts the old handler back."""
    before = signal.getsignal(sig)
    with StopSignals() as signals:
        assert not signals.wait(0)
        signal.raise_signal(sig)
        assert signals.wait(0)
        assert signals.wait()
    assert signal.getsignal(sig) == before


def test_a_stop_signal_inside_another_handler_does_not_hang() -> None:
    """A stop signal whose handler runs while the event's lock is held (as when a
    second SIGTERM interrupts the handler of the first inside Event.set: two in a
    row hung a node for good) still stops the process.

    Run in a child: a handler that blocked on that lock would hang it for good."""
    script = (
        "import signal\n"
        "from pyrokv.signals import StopSignals\n"
        "with StopSignals() as signals:\n"
        "    with signals.stop._cond:  # what Event.set holds while it runs\n"
        "        signal.raise_signal(signal.SIGTERM)\n"
        "    assert signals.wait(5)\n"
        "    assert signals.stop.wait(5)\n"
        "print('stopped')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=15
    )
    assert (done.returncode, done.stdout) == (0, "stopped\n"), done.stderr


def test_node_module_keeps_its_names() -> None:
    """pyrokv.node.StopSignals and STOP_SIGNALS are the ones in pyrokv.signals."""
    from pyrokv import node

    assert node.StopSignals is StopSignals
    assert node.STOP_SIGNALS is STOP_SIGNALS
    assert set(STOP_SIGNALS) == {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@pytest.mark.distributed
@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_each_stop_signal_stops_a_node_and_a_name_server_cleanly(
    sig: signal.Signals, unique: str
) -> None:
    """pyrokv node unregisters and exits 0, and pyrokv nameserver exits 0, on each signal."""
    ns_child, ns = spawn_nameserver()
    try:
        name = f"sig{unique}"
        node = spawn_node(name, ns, f"a..z={name}")
        try:
            node.proc.send_signal(sig)
            assert node.proc.wait(timeout=20) == 0
        finally:
            node.stop()
        assert f"STOPPED {name}" in node.lines
        with naming.ns_proxy(*ns, timeout=5) as proxy:
            assert naming.tasks_name(name) not in proxy.list()
        ns_child.proc.send_signal(sig)
        assert ns_child.proc.wait(timeout=20) == 0
    finally:
        ns_child.stop()

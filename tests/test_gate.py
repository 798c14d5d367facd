"""Routing.gate: a table switch waits for the tasks that decided by the old table.

Entering and leaving take no lock (a list append and pop); only a flip waits.
"""

from __future__ import annotations

import threading
import time

from pyrokv.routing import Gate


def test_a_flip_with_nobody_inside_returns_at_once() -> None:
    """No task inside: the flip does not wait."""
    gate = Gate()
    gate.leave(gate.enter())
    started = time.monotonic()
    assert gate.flip(5.0)
    assert time.monotonic() - started < 5.0


def test_a_flip_waits_for_a_task_that_entered_before_it() -> None:
    """A task inside when the flip starts: the flip returns True once it leaves,
    not before."""
    gate = Gate()
    ticket = gate.enter()
    flipped = threading.Event()
    result: list[bool] = []

    def flip() -> None:
        result.append(gate.flip(30.0))
        flipped.set()

    flipper = threading.Thread(target=flip)
    flipper.start()
    assert not flipped.wait(0.2)  # still inside: the flip waits
    gate.leave(ticket)
    assert flipped.wait(30.0)
    flipper.join()
    assert result == [True]


def test_a_flip_does_not_wait_for_tasks_that_enter_after_it() -> None:
    """A task that enters once a flip has started belongs to the new generation:
    the flip returns when the older one leaves, with the newer one still inside."""
    gate = Gate()
    old = gate.enter()
    done = threading.Event()
    result: list[bool] = []
    started = threading.Event()

    def flip() -> None:
        started.set()
        result.append(gate.flip(30.0))
        done.set()

    flipper = threading.Thread(target=flip)
    flipper.start()
    assert started.wait(30.0)
    deadline = time.monotonic() + 30.0
    while gate._gen == 0 and time.monotonic() < deadline:  # the flip has begun
        time.sleep(0.001)
    new = gate.enter()
    gate.leave(old)
    assert done.wait(30.0)
    flipper.join()
    assert result == [True]
    gate.leave(new)


def test_a_flip_gives_up_after_its_timeout() -> None:
    """A task that never leaves: the flip returns False after its timeout; a later
    flip still waits for that task (it is in the generation that comes round)."""
    gate = Gate()
    stuck = gate.enter()
    assert gate.flip(0.05) is False
    assert gate.flip(0.05) is True  # the other generation: empty
    assert gate.flip(0.05) is False  # back to the stuck task's generation
    gate.leave(stuck)
    assert gate.flip(0.05) is True


def test_many_threads_entering_and_leaving_leave_it_empty() -> None:
    """Threads entering and leaving at once while flips run: every ticket is given
    back, so the next flips find nobody inside."""
    gate = Gate()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            gate.leave(gate.enter())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(50):
            assert gate.flip(30.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert gate.flip(0.0) and gate.flip(0.0)

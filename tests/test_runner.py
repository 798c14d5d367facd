"""TaskRunner: the allowlist holds before any import, and tasks act on their own node; no network."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import pyrokv.tasks
from pyrokv import Registry, TaskArgumentError, TaskNotAllowedError, TaskRunner, tasks
from pyrokv.errors import PyroKVError

CANARY = textwrap.dedent(
    """
    import os
    from os.path import join
    from pyrokv.tasks import get as borrowed

    CALLS = []

    def ok(x, y=2):
        CALLS.append((x, y))
        return x + y

    def _private():
        CALLS.append("private")

    lam = lambda: CALLS.append("lambda")

    class Thing:
        def method(self):
            CALLS.append("method")
    """
)


@pytest.fixture(name="canary")
def _canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A task module that imports os: name it in the allowlist to test what leaks."""
    name = f"canary_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(CANARY)
    (tmp_path / "forbidden_side_effect.py").write_text(
        "raise SystemExit('imported!')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_runs_default_tasks_on_its_own_registry() -> None:
    """Two runners in one process act on their own registries (no singleton)."""
    foo = TaskRunner("foo", Registry())
    bar = TaskRunner("bar", Registry())
    foo.run("pyrokv.tasks.create", ["b"])
    foo.run("pyrokv.tasks.put", ["b", "k", 1])
    assert foo.run("pyrokv.tasks.get", ["b", "k"]) == 1
    assert foo.run("pyrokv.tasks.node_name") == "foo"
    assert bar.run("pyrokv.tasks.node_name") == "bar"
    assert bar.run("pyrokv.tasks.lookup", ["b"]) is False
    assert foo.run("pyrokv.tasks.buckets") == ["b"]
    assert foo.run("pyrokv.tasks.delete", kwargs={"bucket": "b", "key": "k"}) == 1


def test_tasks_outside_a_runner_say_so() -> None:
    """Calling a task function directly is a clear error, not a crash."""
    with pytest.raises(PyroKVError, match="tasks run on a node"):
        tasks.node_name()


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "builtins.eval",
        "pyrokv.tasks.os.system",
        "pyrokv.tasks._current",
        "pyrokv.tasks.__builtins__",
        "pyrokv.tasks.current.__globals__",
        "pyrokv._tasks.get",
        "pyrokv.tasks.TaskContext",
        "pyrokv.tasks.contextvars",
        "pyrokv.tasks",
        "get",
        ".pyrokv.tasks.get",
        "pyrokv..tasks.get",
        "pyrokv.tasks.get ",
        "pyrokv/tasks.get",
        "pyrokv.tasks.nosuch",
        "",
        "forbidden_side_effect.anything",
    ],
)
def test_allowlist_refuses_everything_else(name: str) -> None:
    """Names outside the allowlist raise TaskNotAllowedError and import nothing."""
    runner = TaskRunner("foo", Registry())
    before = set(sys.modules)
    with pytest.raises(TaskNotAllowedError, match="not allowed"):
        runner.run(name, [])
    assert set(sys.modules) == before


@pytest.mark.parametrize("name", [None, 42, ["pyrokv.tasks.get"], b"pyrokv.tasks.get"])
def test_non_string_names_are_refused(name: object) -> None:
    """Only a str names a task."""
    with pytest.raises(TaskNotAllowedError):
        TaskRunner("foo", Registry()).run(name, [])  # type: ignore[arg-type]


def test_allowed_module_exposes_only_its_own_plain_functions(canary: str) -> None:
    """In an allowed module: its functions run; imports, privates, lambdas, classes don't."""
    runner = TaskRunner("foo", Registry(), allow=["pyrokv.tasks", canary])
    assert runner.run(f"{canary}.ok", [1]) == 3
    module = sys.modules[canary]
    for name in (
        "os.system",
        "join",
        "borrowed",
        "_private",
        "lam",
        "Thing",
        "CALLS",
        "os",
    ):
        with pytest.raises(TaskNotAllowedError):
            runner.run(f"{canary}.{name}", ["touch /tmp/pyrokv-pwned"])
    assert module.CALLS == [(1, 2)]


def test_allowlist_entries_are_validated() -> None:
    """A bad module name in the allowlist is refused when the runner is built."""
    for bad in ("_x", "a._b", "a..b", "a b", ""):
        with pytest.raises(TaskNotAllowedError, match="invalid module name"):
            TaskRunner("foo", Registry(), allow=[bad])


def test_wrong_arguments_are_a_task_argument_error() -> None:
    """Arguments that do not fit the signature raise TaskArgumentError naming it."""
    runner = TaskRunner("foo", Registry())
    with pytest.raises(
        TaskArgumentError, match=r"pyrokv.tasks.get\(bucket.*too many positional"
    ):
        runner.run("pyrokv.tasks.get", ["b", "k", "extra"])
    assert isinstance(TaskArgumentError("x"), TypeError)


def test_type_errors_inside_a_task_pass_through() -> None:
    """A TypeError raised by the task itself (arguments fine) is not relabelled."""
    runner = TaskRunner("foo", Registry())
    runner.run("pyrokv.tasks.create", ["b"])
    with pytest.raises(TypeError, match="unhashable") as info:
        runner.run("pyrokv.tasks.put", ["b", ["list", "key"], 1])
    assert not isinstance(info.value, TaskArgumentError)


def test_tasks_lists_exactly_what_run_would_run(canary: str) -> None:
    """tasks() lists the functions run() accepts, with signatures; a module that is
    missing is listed by name with the reason; nothing else leaks."""
    missing = "no_such_module_anywhere"
    runner = TaskRunner("foo", Registry(), ["pyrokv.tasks", canary, missing])
    listed = {name: (signature, summary) for name, signature, summary in runner.tasks()}
    assert listed[f"{canary}.ok"] == ("(x, y=2)", "")
    assert listed["pyrokv.tasks.put"] == (
        "(bucket: str, key: Any, value: Any) -> None",
        "Set ``key`` to ``value`` in ``bucket`` on this node.",
    )
    signature, why = listed[missing]
    assert signature == ""
    assert why.startswith("cannot be imported on this node: ModuleNotFoundError")
    mine = {name for name in listed if name.startswith(f"{canary}.")}
    assert mine == {f"{canary}.ok"}  # no os, join, borrowed, _private, lam, Thing
    ours = {name for name in listed if name.startswith("pyrokv.tasks.")}
    assert ours == {f"pyrokv.tasks.{name}" for name in pyrokv.tasks.__all__} - {
        "pyrokv.tasks.TaskContext"
    }  # each one a task a client may run: no helper that fails when called
    for name in listed:
        if name != missing:
            runner._resolve(name)  # each one passes the allowlist check
    assert [row[0] for row in runner.tasks()] == sorted(listed)

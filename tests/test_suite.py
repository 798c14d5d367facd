"""The test suite itself: every test says the behaviour it checks."""

from __future__ import annotations

import ast
from pathlib import Path


def test_every_test_has_a_docstring() -> None:
    """Each test function in tests/ has a docstring whose first line states what it checks."""
    missing = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                node.name.startswith("test")
            ):
                doc = ast.get_docstring(node)
                if not doc or not doc.splitlines()[0].strip():
                    missing.append(f"{path.name}::{node.name}")
    assert missing == []

"""The reliability figure (issue #15): inputs tried, clear errors, crashes, hangs, lost/duplicated, leaked.

Counted from real test outcomes by ``tests/reliability/conftest.py``:

* a test calls :func:`record` for what it actually exercised (``input`` per hostile input or fault tried,
  ``clear_error`` per typed error it checked, ``recovered`` per ambiguous answer resolved, ...); a test that
  records no ``input`` counts as one input;
* a **failed** test counts under the promise it guards (:func:`guards` on the test function, else the
  module's ``GUARDS``, else ``crash``): ``crash``, ``hang`` (also any failure by pytest-timeout), ``lost``
  (lost or duplicated data) or ``leak``. A passing test adds nothing to those columns.

The session writes ``test-artifacts/reliability-summary.json`` and prints one line at the end.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

GUARD_KINDS = ("crash", "hang", "lost", "leak")

#: nodeid → counts recorded while the test ran
_recorded: dict[str, Counter[str]] = {}


def _current() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]


def record(kind: str, n: int = 1) -> None:
    """Count ``n`` events of ``kind`` for the running test (``input``, ``clear_error``, ``recovered``, ...)."""
    _recorded.setdefault(_current(), Counter())[kind] += n


def recorded(nodeid: str) -> Counter[str]:
    return _recorded.get(nodeid, Counter())


def guards(kind: str) -> Callable[[F], F]:
    """Mark the promise a test guards; its failure is counted as ``kind`` (crash, hang, lost, leak)."""
    if kind not in GUARD_KINDS:
        raise ValueError(f"guard kind {kind!r} not in {GUARD_KINDS}")

    def mark(fn: F) -> F:
        fn._reliability_guards = kind  # type: ignore[attr-defined]
        return fn

    return mark

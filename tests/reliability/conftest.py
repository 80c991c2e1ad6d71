"""Collects the reliability figure from the real outcomes of the tests in this folder (see ``outcomes.py``)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import outcomes

REPO = Path(__file__).resolve().parents[2]
SUMMARY = REPO / "test-artifacts" / "reliability-summary.json"

_totals: Counter[str] = Counter()
_tests: Counter[str] = Counter()
_failed: list[str] = []


def _guard(item: pytest.Item) -> str:
    fn = getattr(item, "function", None)
    kind = getattr(fn, "_reliability_guards", None) or getattr(getattr(item, "module", None), "GUARDS", None)
    return kind if kind in outcomes.GUARD_KINDS else "crash"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" and not (rep.when == "setup" and rep.failed):
        return
    got = outcomes.recorded(item.nodeid)
    _totals["inputs_tried"] += got.get("input", 0) or 1
    for kind, n in got.items():
        if kind != "input":
            _totals[kind] += n
    if rep.passed:
        _tests["passed"] += 1
    elif rep.skipped:
        _tests["skipped"] += 1
    else:
        _tests["failed"] += 1
        text = str(rep.longrepr or "")
        kind = "hang" if "Timeout" in text and "pytest_timeout" in text or "+++ Timeout +++" in text else _guard(item)
        _totals[{"crash": "crashes", "hang": "hangs", "lost": "lost_or_duplicated", "leak": "leaked"}[kind]] += 1
        _failed.append(item.nodeid)


def _summary() -> dict[str, Any]:
    return {
        "inputs_tried": _totals["inputs_tried"],
        "clear_errors": _totals["clear_error"],
        "recovered_ambiguous_answers": _totals["recovered"],
        "crashes": _totals["crashes"],
        "hangs": _totals["hangs"],
        "lost_or_duplicated": _totals["lost_or_duplicated"],
        "leaked": _totals["leaked"],
        "tests": dict(_tests),
        "failed_tests": _failed,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not sum(_tests.values()):
        return
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(json.dumps(_summary(), indent=2) + "\n", encoding="utf-8")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not sum(_tests.values()):
        return
    s = _summary()
    terminalreporter.write_line(
        f"reliability: {s['inputs_tried']} inputs tried, {s['clear_errors']} clear errors, "
        f"{s['recovered_ambiguous_answers']} ambiguous answers resolved, crashes={s['crashes']} hangs={s['hangs']} "
        f"lost/duplicated={s['lost_or_duplicated']} leaked={s['leaked']} "
        f"({s['tests'].get('passed', 0)} tests passed, {s['tests'].get('failed', 0)} failed) -> "
        f"{SUMMARY.relative_to(REPO)}")

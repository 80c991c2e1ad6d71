"""``--workers auto``: the stream count is chosen from the server's own rate (probe 1, 2, 4, 8; stop when no gain)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from kaapana_fhir.clients.fhir import WriteResult
from kaapana_fhir.core.tables import load_mapping, open_table
from kaapana_fhir.flows.tables.flow import AutoWorkers, import_table, write_chunks


class SlotServer:
    """A server fake that handles ``slots`` transactions at once, each taking ``seconds`` (more wait in line)."""

    def __init__(self, slots: int, seconds: float = 0.1) -> None:
        self.sem = threading.Semaphore(slots)
        self.seconds = seconds
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def search(self, rtype: str, params: dict[str, str]) -> list[dict[str, Any]]:
        return []

    def write_entries(self, entries: list[dict[str, Any]], **kw: object) -> WriteResult:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            with self.sem:
                time.sleep(self.seconds)
        finally:
            with self.lock:
                self.active -= 1
        return WriteResult(statuses={"201": len(entries)}, entries=len(entries), chunks=1)


def _entries(n: int) -> list[dict[str, Any]]:
    return [{"resource": {"resourceType": "Observation", "id": f"o{i}"}, "request": {"method": "PUT"}}
            for i in range(n)]


@pytest.mark.parametrize(("slots", "chosen"), [(1, 1), (2, 2), (16, 8)])
def test_probe_keeps_the_server_capacity(slots: int, chosen: int) -> None:
    auto = AutoWorkers()
    server = SlotServer(slots)
    result = write_chunks(server, _entries(34 * 10), chunk_size=10, workers=auto, merge_patients=False)
    assert result.entries == 340 and result.chunks == 34  # nothing lost or doubled by the probe
    assert auto.chosen == chosen, auto.rates
    assert server.peak <= 2 * chosen or server.peak <= 8


def test_small_file_keeps_what_was_measured() -> None:
    auto = AutoWorkers()
    result = write_chunks(SlotServer(4), _entries(30), chunk_size=10, workers=auto, merge_patients=False)
    assert result.chunks == 3 and auto.chosen is None and auto.best in (1, 2) and set(auto.rates) <= {1, 2}


def test_report_names_the_chosen_count_and_rates() -> None:
    m = load_mapping("version: 1\npatient: {key: id, identifier_system: 'urn:t'}\nobservations: [{column: w, code: "
                     "{system: 'http://loinc.org', code: 29463-7}, value: {type: Quantity, unit: kg}}]\n")
    csv = "id,w\n" + "".join(f"P{i},{60 + i % 30}\n" for i in range(200))
    rep = import_table(open_table(csv.encode(), name="w.csv"), m, client=SlotServer(2), chunk_size=10,
                       workers=AutoWorkers())
    assert rep["workers"] == 2 and rep["workers_auto"]["chosen"] == 2
    assert set(rep["workers_auto"]["rates"]) >= {"1", "2"}

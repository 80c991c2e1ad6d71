"""``--workers auto``: the stream count is chosen from the server's own rate (probe 1, 2, 4, 8; stop when no gain).

The server fake runs on a virtual clock, so the choice does not depend on how loaded the test machine is: a probe
step of ``k`` chunks from ``n`` streams against a server that handles ``slots`` transactions at once takes
``ceil(k / min(n, slots))`` rounds of one virtual second (``n`` = the distinct threads that wrote in the step;
each write also sleeps 0.1 s of real time so that the probe's pool really starts ``n`` threads).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest

from kaapana_fhir.clients.fhir import WriteResult
from kaapana_fhir.core.tables import load_mapping, open_table
from kaapana_fhir.flows.tables.flow import AutoWorkers, import_table, write_chunks


class SlotServer:
    """A server fake with ``slots`` parallel transactions and a virtual clock (unit test only)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.now = 0.0
        self.calls = 0
        self.threads: set[int] = set()
        self.lock = threading.Lock()
        self.written: list[str] = []

    def clock(self) -> float:
        with self.lock:
            if self.calls:
                self.now += math.ceil(self.calls / min(len(self.threads), self.slots))
            self.calls, self.threads = 0, set()
            return self.now

    def search(self, rtype: str, params: dict[str, str]) -> list[dict[str, Any]]:
        return []

    def write_entries(self, entries: list[dict[str, Any]], **kw: object) -> WriteResult:
        with self.lock:
            self.calls += 1
            self.threads.add(threading.get_ident())
            self.written.extend(e["resource"]["id"] for e in entries)
        time.sleep(0.1)
        types: dict[str, int] = {}
        for e in entries:
            types[e["resource"]["resourceType"]] = types.get(e["resource"]["resourceType"], 0) + 1
        return WriteResult(statuses={"201": len(entries)}, types=types, entries=len(entries), chunks=1)


def _entries(n: int) -> list[dict[str, Any]]:
    return [{"resource": {"resourceType": "Observation", "id": f"o{i}"}, "request": {"method": "PUT"}}
            for i in range(n)]


@pytest.mark.parametrize(("slots", "chosen", "probed"), [(1, 1, [1, 2]), (2, 2, [1, 2, 4]), (3, 4, [1, 2, 4, 8]),
                                                         (16, 8, [1, 2, 4, 8])])
def test_probe_keeps_the_server_capacity(slots: int, chosen: int, probed: list[int]) -> None:
    server = SlotServer(slots)
    auto = AutoWorkers(clock=server.clock)
    result = write_chunks(server, _entries(32 * 10), chunk_size=10, workers=auto, merge_patients=False)
    assert result.entries == 320 and result.chunks == 32  # nothing lost or doubled by the probe
    assert sorted(server.written) == sorted(f"o{i}" for i in range(320))
    assert auto.chosen == chosen and sorted(auto.rates) == probed, auto.rates


def test_fewest_streams_within_the_gain_of_the_fastest() -> None:
    auto = AutoWorkers(rates={1: 100.0, 2: 190.0, 4: 205.0, 8: 150.0})
    assert auto.best == 2  # 190 * 1.1 >= 205
    assert AutoWorkers().best == 1


def test_small_file_keeps_what_was_measured() -> None:
    server = SlotServer(4)
    auto = AutoWorkers(clock=server.clock)
    result = write_chunks(server, _entries(30), chunk_size=10, workers=auto, merge_patients=False)
    # 3 chunks: 2 at one stream, the last one alone at "two": no gain measured, so one stream
    assert result.chunks == 3 and auto.chosen is None and sorted(auto.rates) == [1, 2] and auto.best == 1


def test_report_names_the_chosen_count_and_rates() -> None:
    m = load_mapping("version: 1\npatient: {key: id, identifier_system: 'urn:t'}\nobservations: [{column: w, code: "
                     "{system: 'http://loinc.org', code: 29463-7}, value: {type: Quantity, unit: kg}}]\n")
    csv = "id,w\n" + "".join(f"P{i},{60 + i % 30}\n" for i in range(100))
    server = SlotServer(2)
    rep = import_table(open_table(csv.encode(), name="w.csv"), m, client=server, chunk_size=10,
                       workers=AutoWorkers(clock=server.clock))
    assert rep.workers == 2 and rep.workers_auto["chosen"] == 2
    assert set(rep.workers_auto["rates"]) == {"1", "2", "4"}
    assert rep.resources_written == {"Patient": 100, "Observation": 100}

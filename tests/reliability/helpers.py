"""Shared helpers of the reliability tests: a light long-format table, small studies in Orthanc, and
server-state snapshots (resources without server metadata) to compare a faulty run with a clean one."""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kaapana_fhir.clients.fhir import FhirClient, WriteResult
from kaapana_fhir.clients.s3 import ObjectStore
from kaapana_fhir.core.tables import load_mapping, open_table
from kaapana_fhir.dev import stack as devstack
from kaapana_fhir.flows.tables.flow import import_table
from kaapana_fhir.flows.tables.watch import sidecars

E = TypeVar("E", bound=BaseException)

#: one Observation per row, many rows per patient (``instance_columns``): ids stay distinct per row
LONG_MAPPING = """
version: 1
name: reliability-long
patient: {key: pid}
instance_columns: [visit]
observations:
  - column: weight
    code: {system: "http://loinc.org", code: 29463-7, display: Body weight}
    value: {type: Quantity, unit: kg}
"""

#: server-managed elements ignored when comparing content
SERVER_META = ("meta", "text")


def long_csv(tag: str, rows: int, per_patient: int = 10) -> bytes:
    """``pid,visit,weight`` with ``rows`` data rows, ``per_patient`` visits per patient (ids ``R<tag>-<n>``)."""
    lines = ["pid,visit,weight"]
    lines += [f"R{tag}-{i // per_patient},{i % per_patient},{50 + i % 40}.5" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def long_mapping(source: str = "reliability") -> dict[str, Any]:
    """:data:`LONG_MAPPING`, loaded."""
    return load_mapping(LONG_MAPPING, source=source)


def upload_long_table(store: ObjectStore, bucket: str, key: str, data: bytes) -> None:
    """A new ``bucket`` holding the table ``key`` and its mapping sidecar (:data:`LONG_MAPPING`), as a user
    drops them for the watcher."""
    store.ensure_bucket(bucket)
    store.put_bytes(bucket, key, data)
    store.put_bytes(bucket, sidecars(key)["mapping"], LONG_MAPPING.encode())


def clean_import_bundle(data: bytes, name: str, out: Path) -> dict[str, Any]:
    """The transaction Bundle a clean run of the long table ``data`` writes (written to ``out``, not sent)."""
    import_table(open_table(data, name=name), long_mapping(), out_path=out)
    return json.loads(out.read_text())


class SinkFhir:
    """A FHIR client that accepts and counts transactions without storing them (isolates our memory)."""

    def __init__(self) -> None:
        self.entries = 0

    def search(self, *a: Any, **kw: Any) -> list[dict[str, Any]]:
        return []

    def write_entries(self, entries: list[dict[str, Any]], **kw: Any) -> WriteResult:
        n = len(entries)
        self.entries += n
        return WriteResult(statuses={"200": n}, entries=n, chunks=1)


@contextmanager
def refused_within(exc_type: type[E], seconds: float = 5) -> Iterator[pytest.ExceptionInfo[E]]:
    """The block raises ``exc_type`` within ``seconds``: a hostile input or a dead server is refused in
    bounded time, not after a hang."""
    t0 = time.perf_counter()
    with pytest.raises(exc_type) as exc:
        yield exc
    took = time.perf_counter() - t0
    assert took < seconds, f"{exc_type.__name__} after {took:.1f} s, bound {seconds} s: {exc.value}"


def strip(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without server metadata (``meta``, ``text``), for content comparison."""
    return {k: v for k, v in copy.deepcopy(resource).items() if k not in SERVER_META}


def snapshot(fhir: FhirClient, rtype: str, params: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """All resources of a search as ``{id: stripped resource}``; raises on duplicate ids (never expected)."""
    out: dict[str, dict[str, Any]] = {}
    p = {"_count": "500", **(params or {})}
    for r in fhir.search(rtype, p):
        assert r["id"] not in out, f"{rtype}/{r['id']} returned twice"
        out[r["id"]] = strip(r)
    return out


def expected_from_bundle(bundle: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {e["resource"]["id"]: strip(e["resource"]) for e in bundle["entry"]
            if e["resource"]["resourceType"] == rtype}


def canonical(resources: dict[str, dict[str, Any]]) -> str:
    return json.dumps(resources, sort_keys=True)


def server_state(fhir: FhirClient, rtype: str, params: dict[str, str] | None = None) -> str:
    """:func:`canonical` of :func:`snapshot`: the server's resources of a search, comparable as text."""
    return canonical(snapshot(fhir, rtype, params))


def clean_state(bundle: dict[str, Any], rtype: str) -> str:
    """:func:`canonical` of :func:`expected_from_bundle`: what a single clean run writes, comparable as text."""
    return canonical(expected_from_bundle(bundle, rtype))


def store_studies(dicomweb: Any, tag: str, n: int, *, series_per_study: int = 2,
                  patients: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """``n`` small studies (``series_per_study`` series × 1 instance of 4×4 pixels) stored via STOW-RS,
    each under its own PatientID ``REL-<tag>-<i>`` (or the given patient ids, cycled)."""
    from pydicom.uid import generate_uid

    from tests.support.dicom_json import ct_series

    pids = list(patients or [])
    studies = []
    batch: list[Any] = []
    for i in range(n):
        pid = pids[i % len(pids)] if pids else f"REL-{tag}-{i:04d}"
        study = generate_uid()
        series = [generate_uid() for _ in range(series_per_study)]
        for j, s in enumerate(series):
            batch += ct_series(study, s, pid, n=1, series_number=j + 1, size=4)
        studies.append({"study": study, "series": series, "patient": pid})
        if len(batch) >= 40:
            dicomweb.store(batch)
            batch = []
    if batch:
        dicomweb.store(batch)
    return studies


class PrivateHapi:
    """A HAPI FHIR server of our own (file-backed H2) that a test may kill (SIGKILL) and restart."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.db_file = state_dir / "db" / "hapi"
        self.svc = devstack.start_hapi(state_dir, db_file=self.db_file)
        self.port = self.svc.port
        self.url = self.svc.url

    def kill(self) -> None:
        """Crash the server (SIGKILL to its process group: no shutdown hooks, like an OOM kill)."""
        pid = self.svc.pid
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                return
            time.sleep(0.05)

    def restart(self) -> None:
        self.svc = devstack.start_hapi(self.state_dir, db_file=self.db_file, port=self.port)

    def stop(self) -> None:
        devstack.stop_pid(self.svc.pid)

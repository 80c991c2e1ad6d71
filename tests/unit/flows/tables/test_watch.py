"""Watcher decisions (new / changed / failed / pending by ETag) and S3 import edge cases, on moto's S3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from kaapana_fhir.clients.fhir import WriteResult
from kaapana_fhir.dev.synthetic_tables import lung1_ids, synthetic_lung1_csv
from kaapana_fhir.flows.tables import watch as W
from kaapana_fhir.flows.tables.flow import import_object

moto = pytest.importorskip("moto")
BUCKET = "watch-test"


@pytest.fixture()
def store(moto_url: str) -> Iterator[Any]:
    import requests

    from kaapana_fhir.clients.s3 import ObjectStore

    requests.post(f"{moto_url}/moto-api/reset", timeout=10)
    s = ObjectStore(moto_url, "test", "test")
    s.ensure_bucket(BUCKET)
    yield s


class FakeFhir:
    """Stands in for FhirClient: records transaction Bundles (unit test: no server)."""

    def __init__(self, fail: bool = False) -> None:
        self.bundles: list[dict] = []
        self.fail = fail

    def search(self, rtype: str, params: dict) -> Iterator[dict]:
        return iter(())

    def write_entries(self, entries: list[dict], *, chunk_size: int = 500) -> WriteResult:
        if self.fail:
            from kaapana_fhir.exceptions import FhirConnectionError

            raise FhirConnectionError("FHIR server at http://x is unreachable")
        self.bundles.append({"entry": list(entries)})
        counts: dict[str, int] = {}
        for e in entries:
            counts[e["resource"]["resourceType"]] = counts.get(e["resource"]["resourceType"], 0) + 1
        return WriteResult(statuses={"200": len(entries)}, types=counts, entries=len(entries), chunks=1)


def _put_lung1(store: Any, key: str = "fhir-import/a.csv", seed: int = 1) -> None:
    store.put_bytes(BUCKET, key, synthetic_lung1_csv(lung1_ids(4), seed).encode())


def test_key_classification_and_sidecars() -> None:
    assert W.is_data_key("fhir-import/a.csv") and W.is_data_key("fhir-import/x/b.xlsx")
    for k in ("fhir-import/a.mapping.yaml", "fhir-import/a.preset", "fhir-import/a.import-report.json",
              "fhir-import/a.dictionary.csv", "fhir-import/.kaapana-fhir-state/x.json", "fhir-import/a.pdf"):
        assert not W.is_data_key(k), k
    assert W.sidecars("p/a.csv")["report"] == "p/a.import-report.json"
    assert W.state_key("p/a.csv").startswith("p/.kaapana-fhir-state/")


def test_object_without_mapping_waits_then_triggers_once(store: Any) -> None:
    _put_lung1(store)
    assert W.find_new_objects(store, BUCKET, "fhir-import/") == []
    store.put_bytes(BUCKET, "fhir-import/a.preset", b"lung1\n")
    confs = W.find_new_objects(store, BUCKET, "fhir-import/")
    assert [(c["object_key"], c["preset"]) for c in confs] == [("fhir-import/a.csv", "lung1")]
    assert W.record_triggered(store, BUCKET, confs, ["manual__1"]) == []
    assert W.find_new_objects(store, BUCKET, "fhir-import/") == []  # pending: not triggered twice


def test_state_only_after_a_successful_trigger_failed_trigger_retried(store: Any) -> None:
    _put_lung1(store)
    store.put_bytes(BUCKET, "fhir-import/b.csv", b"PatientID,age\nP1,50\n")
    confs = W.find_new_objects(store, BUCKET, "fhir-import/", default_preset="lung1")
    assert len(confs) == 2
    # listing alone records nothing: a watcher run that dies before triggering loses no file
    assert len(W.find_new_objects(store, BUCKET, "fhir-import/", default_preset="lung1")) == 2
    # trigger of a.csv failed (e.g. DagNotFound), b.csv succeeded
    missed = W.record_triggered(store, BUCKET, confs, [None, "manual__b"])
    assert missed == ["fhir-import/a.csv"]
    again = W.find_new_objects(store, BUCKET, "fhir-import/", default_preset="lung1")
    assert [c["object_key"] for c in again] == ["fhir-import/a.csv"]


def test_imported_same_etag_not_again_changed_etag_again(store: Any) -> None:
    _put_lung1(store)
    confs = W.find_new_objects(store, BUCKET, "fhir-import/", default_preset="lung1")
    fhir = FakeFhir()
    rep = import_object(store, fhir, BUCKET, confs[0]["object_key"], preset="lung1", signature=confs[0]["signature"])
    assert rep.status == "imported" and rep.resources_written["Patient"] == 4
    report = json.loads(store.get_bytes(BUCKET, "fhir-import/a.import-report.json"))
    assert report["rows_read"] == 4 and report["duration_s"] >= 0
    # the report object's keys are a documented contract (MinIO, XCom, --report): a rename fails here
    assert list(report) == ["file", "mapping", "status", "skip_invalid_rows", "rows_read", "empty_rows",
                            "rows_rejected", "resources_written", "rejected", "issue_count", "duration_s", "policy",
                            "chunks", "retracted", "workers", "workers_auto", "patient_conflicts_policy",
                            "patient_corrections", "object_key", "bucket", "etag_signature"]
    assert report == rep.as_dict()
    assert W.find_new_objects(store, BUCKET, "fhir-import/", default_preset="lung1") == []
    _put_lung1(store, seed=2)  # new content → new ETag
    assert len(W.find_new_objects(store, BUCKET, "fhir-import/", default_preset="lung1")) == 1


def test_failed_import_is_retried_next_run(store: Any) -> None:
    from kaapana_fhir.exceptions import FhirConnectionError

    _put_lung1(store)
    store.put_bytes(BUCKET, "fhir-import/a.preset", b"lung1")
    confs = W.find_new_objects(store, BUCKET, "fhir-import/")
    with pytest.raises(FhirConnectionError):
        import_object(store, FakeFhir(fail=True), BUCKET, "fhir-import/a.csv", signature=confs[0]["signature"])
    state = json.loads(store.get_bytes(BUCKET, W.state_key("fhir-import/a.csv")))
    assert state["status"] == "failed" and "unreachable" in state["error"]
    assert [c["object_key"] for c in W.find_new_objects(store, BUCKET, "fhir-import/")] == ["fhir-import/a.csv"]


def test_rejected_file_is_not_retried_for_the_same_etag(store: Any) -> None:
    store.put_bytes(BUCKET, "fhir-import/bad.csv", b"PatientID,age\nP1,abc\n")
    store.put_bytes(BUCKET, "fhir-import/bad.preset", b"lung1")
    confs = W.find_new_objects(store, BUCKET, "fhir-import/")
    rep = import_object(store, FakeFhir(), BUCKET, "fhir-import/bad.csv", signature=confs[0]["signature"])
    assert rep.status == "rejected" and "clinical.T.Stage" in rep.error
    # rejected before its mapping could be applied: the short report
    assert list(json.loads(store.get_bytes(BUCKET, "fhir-import/bad.import-report.json"))) == [
        "file", "status", "rows_read", "resources_written", "rejected", "duration_s", "object_key", "bucket",
        "etag_signature", "error"]
    assert W.find_new_objects(store, BUCKET, "fhir-import/") == []


def test_mapping_sidecar_is_used_and_its_change_retriggers(store: Any) -> None:
    store.put_bytes(BUCKET, "fhir-import/t.csv", b"pid;w\nP1;72,5\n")
    mapping = ("version: 1\npatient: {key: pid}\nobservations:\n - column: w\n   code: {code: w, system: 'urn:t'}\n"
               "   value: {type: Quantity, unit: kg}\n")
    store.put_bytes(BUCKET, "fhir-import/t.mapping.yaml", mapping.encode())
    confs = W.find_new_objects(store, BUCKET, "fhir-import/")
    assert confs[0]["mapping_key"] == "fhir-import/t.mapping.yaml"
    fhir = FakeFhir()
    rep = import_object(store, fhir, BUCKET, "fhir-import/t.csv", mapping_key=confs[0]["mapping_key"],
                        signature=confs[0]["signature"])
    assert rep.status == "imported"
    obs = [e["resource"] for b in fhir.bundles for e in b["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert obs[0]["valueQuantity"]["value"] == 72.5
    store.put_bytes(BUCKET, "fhir-import/t.mapping.yaml", mapping.replace("kg", "g").encode())
    assert len(W.find_new_objects(store, BUCKET, "fhir-import/")) == 1


def test_object_deleted_between_listing_and_reading(store: Any) -> None:
    _put_lung1(store)
    confs = W.find_new_objects(store, BUCKET, "fhir-import/", default_preset="lung1")
    store.delete(BUCKET, "fhir-import/a.csv")
    fhir = FakeFhir()
    rep = import_object(store, fhir, BUCKET, confs[0]["object_key"], preset="lung1", signature=confs[0]["signature"])
    assert rep.status == "gone" and "not found" in rep.error
    assert list(rep.as_dict()) == ["file", "status", "duration_s", "error"]
    assert fhir.bundles == []
    state = json.loads(store.get_bytes(BUCKET, W.state_key("fhir-import/a.csv")))
    assert state["status"] == "gone"
    assert W.find_new_objects(store, BUCKET, "fhir-import/", default_preset="lung1") == []


def test_stale_pending_is_triggered_again(store: Any) -> None:
    _put_lung1(store)
    confs = W.find_new_objects(store, BUCKET, "fhir-import/", default_preset="lung1")
    assert len(confs) == 1
    W.record_triggered(store, BUCKET, confs, ["manual__1"])
    assert W.find_new_objects(store, BUCKET, "fhir-import/", default_preset="lung1") == []
    assert len(W.find_new_objects(store, BUCKET, "fhir-import/", default_preset="lung1", pending_timeout_s=0)) == 1


@pytest.mark.parametrize("updated", [None, "yesterday", "2026-01-01T10:00:00", 12345, ["x"]])
def test_malformed_state_is_reported_and_every_file_still_triggered(store: Any, updated: Any,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A state object with a missing, garbage, naive or wrongly typed ``updated`` (or one that is not JSON at all)
    must not stop the watcher: it is logged and ignored, and every file is still triggered."""
    _put_lung1(store, "fhir-import/a.csv")
    _put_lung1(store, "fhir-import/b.csv", seed=2)
    state = {"key": "fhir-import/a.csv", "signature": W.signature_of(store, BUCKET, "fhir-import/a.csv"),
             "status": "pending"}
    if updated is not None:
        state["updated"] = updated
    store.put_bytes(BUCKET, W.state_key("fhir-import/a.csv"), json.dumps(state).encode())
    store.put_bytes(BUCKET, W.state_key("fhir-import/b.csv"), b"{not json")
    confs = W.find_new_objects(store, BUCKET, "fhir-import/", default_preset="lung1")
    assert sorted(c["object_key"] for c in confs) == ["fhir-import/a.csv", "fhir-import/b.csv"]
    assert "no valid 'updated' time" in caplog.text
    assert "ignoring unreadable state object" in caplog.text

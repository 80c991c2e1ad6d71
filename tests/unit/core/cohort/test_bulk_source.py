"""Cohort from a Bulk Data $export: the NDJSON files of the export are flattened line by line (exporter faked:
the $export protocol itself is tested in tests/unit/clients)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.clients import fhir_bulk
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.exceptions import ConfigError
from kaapana_fhir.flows.cohort import flow
from tests.support.cohort_data import cohort_resources


def test_bulk_export_files_build_the_same_cohort_as_searches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = cohort_resources("urn:test:bulk", 4, n_clinical=5, n_features=3, n_segments=1)
    asked: dict[str, Any] = {}

    def fake_export(self: Any, folder: Path, level: str = "system", **kw: Any) -> fhir_bulk.ExportResult:
        asked.update(level=level, **kw)
        files = []
        for rtype in sorted({r["resourceType"] for r in res}):
            p = Path(folder) / f"{rtype}.ndjson"
            items = [r for r in res if r["resourceType"] == rtype]
            p.write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
            files.append(fhir_bulk.DownloadedFile(rtype, f"http://x/{rtype}", p, len(items), p.stat().st_size))
        manifest = fhir_bulk.ExportManifest("t", "r", ())
        return fhir_bulk.ExportResult(fhir_bulk.ExportJob("http://x/status"), manifest, files)

    monkeypatch.setattr(fhir_bulk.BulkExporter, "export", fake_export)
    client = FhirClient("http://fhir.invalid/fhir")  # no request is sent: the exporter is faked
    built = flow.build_cohort(client, bulk_folder=tmp_path, filters=["Histology~carcinoma; n_series>=1"])
    assert asked["level"] == "system"
    assert set(asked["types"]) == {"Patient", "Observation", "Condition", "ImagingStudy", "BodyStructure"}
    assert sum(built.fetched.count().values()) == len(res)
    assert len(built.cohort.patients) == 4 and built.dropped == {}
    assert set(built.selected.patients["patient_key"]) <= set(built.cohort.patients["patient_key"])
    with pytest.raises(ConfigError, match="bulk"):
        flow.build_cohort(client, bulk_folder=tmp_path, patient_search="Patient?gender=male")


def test_ndjson_lines_are_bounded_and_parsed_with_the_json_rules(tmp_path: Path) -> None:
    ok = {"resourceType": "Patient", "id": "p"}
    p = tmp_path / "000-Patient.ndjson"
    p.write_text(json.dumps(ok) + "\n\n" + json.dumps({**ok, "id": "q"}), encoding="utf-8")
    assert [r["id"] for r in fhir_bulk.iter_ndjson(p)] == ["p", "q"]

    long_line = json.dumps({**ok, "text": {"div": "x" * 5000}})
    p.write_text(json.dumps(ok) + "\n" + long_line + "\n", encoding="utf-8")
    with pytest.raises(fhir_bulk.BulkExportError, match=r"line 2 is longer than 1000 bytes"):
        list(fhir_bulk.iter_ndjson(p, max_line_bytes=1000))
    assert len(list(fhir_bulk.iter_ndjson(p))) == 2

    bad = {
        "deep": '{"resourceType": "Patient", "x": ' + "[" * 100 + "]" * 100 + "}",
        "long integer": '{"resourceType": "Patient", "n": ' + "9" * 50 + "}",
        "NaN": '{"resourceType": "Patient", "n": NaN}',
        "not JSON": '{"resourceType": "Patient"',
        "no resourceType": '{"id": "p"}',
    }
    rules = {"deep": "nesting at most", "long integer": "integers of at most", "NaN": "finite numbers",
             "not JSON": "is not JSON", "no resourceType": "no resourceType"}
    for name, line in bad.items():
        p.write_text(json.dumps(ok) + "\n" + line + "\n", encoding="utf-8")
        with pytest.raises(fhir_bulk.BulkExportError, match=rules[name]) as err:
            list(fhir_bulk.iter_ndjson(p))
        assert "line 2" in str(err.value) and str(p) in str(err.value), name


def test_export_state_and_manifest_are_bounded(tmp_path: Path) -> None:
    client = FhirClient("http://fhir.invalid/fhir")
    ex = fhir_bulk.BulkExporter(client)
    state = tmp_path / fhir_bulk.STATE_FILE
    state.write_bytes(b'{"request": ' + b" " * (fhir_bulk.MAX_STATE_BYTES + 1) + b"1}")
    with pytest.raises(fhir_bulk.BulkExportError, match=r"export-state.json: unreadable export state.*at most"):
        ex.export(tmp_path)
    state.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(fhir_bulk.BulkExportError, match=r"rule: a JSON object"):
        ex.export(tmp_path)
    many = {"output": [{"type": "Patient", "url": f"http://x/{i}"} for i in range(fhir_bulk.MAX_EXPORT_FILES + 1)]}
    with pytest.raises(fhir_bulk.BulkExportError, match=r"lists 10001 files \(rule: at most 10000"):
        fhir_bulk.ExportManifest.from_json(many, "http://x/status")

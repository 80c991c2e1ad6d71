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

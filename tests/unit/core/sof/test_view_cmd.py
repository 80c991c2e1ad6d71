"""``kaapana-fhir view run|validate`` over NDJSON and Bundle files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kaapana_fhir.cli.main import main
from tests.support.cohort_data import cohort_resources


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    res = cohort_resources("urn:test:view", 3, n_clinical=4, n_features=3, n_segments=1)
    nd = tmp_path / "r.ndjson"
    nd.write_text("".join(json.dumps(r) + "\n" for r in res), encoding="utf-8")
    bundle = tmp_path / "b.json"
    patients = [r for r in res if r["resourceType"] == "Patient"]
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": p} for p in patients]}), encoding="utf-8")
    return nd, bundle


def test_run_csv_parquet_json(files: tuple[Path, Path], tmp_path: Path) -> None:
    nd, bundle = files
    out = tmp_path / "p.csv"
    assert main(["view", "run", "patient", str(nd), str(bundle), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 6 and {r["patient_id"] for r in rows} == {"P0000", "P0001", "P0002"}
    assert {r["deceased"] for r in rows} <= {"true", "false"}
    pq_out = tmp_path / "f.parquet"
    assert main(["view", "run", "radiomics_feature", str(nd), "--out", str(pq_out)]) == 0
    table = pq.read_table(pq_out)
    assert table.num_rows == 9 and str(table.schema.field("value").type) == "double"
    js = tmp_path / "c.json"
    assert main(["view", "run", "condition", str(nd), "--format", "json", "--out", str(js)]) == 0
    assert len(json.loads(js.read_text(encoding="utf-8"))) == 3


def test_invalid_view_and_input(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nd, _ = files
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "v", "resource": "Patient", "select": [{"colum": []}]}), encoding="utf-8")
    assert main(["view", "validate", str(bad)]) == 1
    assert "select[0].colum: unknown element 'colum'" in capsys.readouterr().err
    assert main(["view", "run", str(bad), str(nd)]) == 1
    broken = tmp_path / "broken.ndjson"
    broken.write_text('{"resourceType": "Patient", "id": "a"}\n{not json\n', encoding="utf-8")
    assert main(["view", "run", "patient", str(broken), "--out", str(tmp_path / "x.csv")]) == 1

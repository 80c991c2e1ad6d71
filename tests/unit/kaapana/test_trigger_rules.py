from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaapana_fhir.exceptions import ConfigError
from kaapana_fhir.kaapana.trigger_rules import build_confs, load_rules, matching_dags


def series(uid: str, modality: str) -> dict:
    return {"0020000E": {"vr": "UI", "Value": [uid]}, "00080060": {"vr": "CS", "Value": [modality]}}


RULES = [
    {"search_tags": {}, "dag_ids": {"dicom-to-fhir": {"fetch_method": "fetch", "single_execution": False}}},
    {"search_tags": {"0x0008,0x0060": "SEG, RTSTRUCT"}, "dag_ids": {"radiomics-to-fhir": {"single_execution": True}}},
]


def test_match_or_values_and_empty_rule() -> None:
    assert set(matching_dags(RULES, series("1.2", "CT"))) == {"dicom-to-fhir"}
    assert set(matching_dags(RULES, series("1.3", "seg"))) == {"dicom-to-fhir", "radiomics-to-fhir"}


def test_confs_batch_vs_single_execution() -> None:
    confs = build_confs(RULES, [series("1.1", "CT"), series("1.2", "SEG"), series("1.3", "SEG")])
    assert confs["dicom-to-fhir"] == [{"fetch_method": "fetch", "single_execution": False,
                                       "data_form": {"identifiers": ["1.1", "1.2", "1.3"]}}]
    assert [c["data_form"]["identifiers"] for c in confs["radiomics-to-fhir"]] == [["1.2"], ["1.3"]]


def test_bad_rule_files(tmp_path: Path) -> None:
    p = tmp_path / "x_trigger_rule.json"
    p.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ConfigError, match="list"):
        load_rules([p])
    with pytest.raises(ConfigError, match="DICOM tag"):
        matching_dags([{"search_tags": {"Modality": "CT"}, "dag_ids": {"x": {}}}], series("1", "CT"))


def test_shipped_trigger_rules_parse() -> None:
    dags = Path(__file__).resolve().parents[3] / "dags"
    files = sorted(dags.glob("*trigger_rule.json"))
    rules = load_rules(files)
    for f in files:
        assert f.name.startswith("kaapana_fhir_"), f"{f.name}: prefix avoids collisions with other extensions"
    assert all(r["dag_ids"] for r in rules)

"""Radiomics → FHIR mapping (core): codes, units, ids, absent values, result-file parsers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kaapana_fhir.core import codes
from kaapana_fhir.core.radiomics.mapping import (
    CS_IBSI,
    RadiomicsRun,
    SegmentFeatures,
    feature_table,
    map_run,
    settings_hash,
    split_feature_key,
    unit_for,
)
from kaapana_fhir.core.radiomics.results import parse_csv, parse_json, parse_result_file
from kaapana_fhir.core.validate import validate_resource
from kaapana_fhir.exceptions import MappingError


def _run(features: dict, *, modality: str = "CT", settings: dict | None = None, **seg_kw: object) -> RadiomicsRun:
    return RadiomicsRun(patient_value="RADMAP-1", study_uid="1.2.3", seg_sop_uid="1.2.3.4.5",
                        segments=[SegmentFeatures(1, "GTV-1", features, **seg_kw)], image_series_uid="1.2.3.4",
                        modality=modality, settings=settings or {"setting": {"binWidth": 25}},
                        pyradiomics_version="3.0.1", effective="2020-01-01")


def _by_code(resources: list[dict], segment: int | None = None) -> dict[str, dict]:
    out = {}
    for r in resources:
        if segment is not None and f"/{segment}/" not in r.get("identifier", [{}])[0].get("value", ""):
            continue
        if r["resourceType"] == "Observation" and "hasMember" not in r and "component" not in r:
            c = r["code"]["coding"][0]
            if c["system"] == codes.CS_PYRADIOMICS:
                out[r["method"]["coding"][0]["code"] + "_" + c["code"]] = r
    return out


def test_feature_table_covers_pyradiomics_and_fixes_upstream_ibsi_errors() -> None:
    from radiomics import getFeatureClasses

    table = feature_table()
    for cls, klass in getFeatureClasses().items():
        for name in klass.getFeatureNames():
            assert f"{cls}_{name}" in table, f"{cls}_{name} missing from features.csv"
    ibsi = [d.ibsi_code for d in table.values() if d.ibsi_code]
    assert len(ibsi) == len(set(ibsi)), "an IBSI code is used twice"
    assert all(len(c) == 4 and c.isalnum() and c.isupper() or c.isdigit() for c in ibsi)
    # known errors of pyradiomics-dcm's table (fhir-mappings.md 3.3)
    assert table["glszm_LowGrayLevelZoneEmphasis"].ibsi_code == "XMSY"
    assert table["glszm_HighGrayLevelZoneEmphasis"].ibsi_code == "5GN9"
    assert table["firstorder_Kurtosis"].ibsi_code == "", "pyradiomics Kurtosis = IBSI kurtosis + 3"
    assert table["shape_MeshVolume"].ibsi_code == "RNU0" and table["glcm_JointEntropy"].ibsi_code == "TU9B"


@pytest.mark.parametrize(("cls", "name", "modality", "code"), [
    ("shape", "MeshVolume", "CT", "mm3"), ("shape", "SurfaceArea", "MR", "mm2"), ("shape", "Sphericity", "CT", "1"),
    ("shape", "Maximum3DDiameter", "CT", "mm"), ("shape", "SurfaceVolumeRatio", "CT", "/mm"),
    ("firstorder", "Mean", "CT", "[hnsf'U]"), ("firstorder", "Mean", "MR", "1"),
    ("firstorder", "Variance", "CT", "[hnsf'U]2"), ("firstorder", "Entropy", "CT", "1"),
    ("glcm", "Contrast", "CT", "1"),
])
def test_units_by_feature_and_modality(cls: str, name: str, modality: str, code: str) -> None:
    assert unit_for(cls, name, modality)[0] == code


def test_split_feature_keys() -> None:
    assert split_feature_key("original_firstorder_Mean") == ("original", "firstorder", "Mean")
    assert split_feature_key("wavelet-LLH_glcm_Idmn") == ("wavelet-LLH", "glcm", "Idmn")
    assert split_feature_key("log-sigma-3-0-mm-3D_glszm_ZoneEntropy")[0] == "log-sigma-3-0-mm-3D"
    assert split_feature_key("shape_VoxelVolume") == ("original", "shape", "VoxelVolume")
    with pytest.raises(MappingError, match="imageType"):
        split_feature_key("weird")


def test_map_run_resources_links_and_values() -> None:
    feats = {"original_firstorder_Mean": -512.25, "original_shape_MeshVolume": 1234.5,
             "wavelet-LLH_glcm_Contrast": 0.5, "original_firstorder_Skewness": float("nan"),
             "original_firstorder_Maximum": float("inf"), "original_glcm_Idm": "not a number",
             "original_glcm_Id": "0.75", "diagnostics_Versions_PyRadiomics": "v3.0.1"}
    res = map_run(_run(feats))
    for r in res.resources:
        validate_resource(r)
    kinds = [r["resourceType"] for r in res.resources]
    assert kinds.count("Device") == 1 and kinds.count("BodyStructure") == 1
    groups = [r for r in res.resources if "hasMember" in r]
    assert len(groups) == res.groups == 2  # original + wavelet-LLH
    assert sum(len(g["hasMember"]) for g in groups) == res.features == 7
    obs = _by_code(res.resources)
    mean = obs["original_firstorder_Mean"]
    assert mean["valueQuantity"] == {"value": -512.25, "unit": "HU", "system": codes.UCUM, "code": "[hnsf'U]"}
    assert mean["subject"]["reference"].startswith("Patient/patient-")
    assert mean["derivedFrom"][0]["reference"].startswith("ImagingStudy/imagings")
    assert "partOf" not in mean  # MII (default): partOf only to a reporting Procedure
    assert mean["focus"][0]["reference"].startswith("BodyStructure/")
    assert any(c["system"] == CS_IBSI and c["code"] == "Q4LE" for c in mean["code"]["coding"])
    assert obs["original_firstorder_Skewness"]["dataAbsentReason"]["coding"][0]["code"] == "not-a-number"
    assert obs["original_firstorder_Maximum"]["dataAbsentReason"]["coding"][0]["code"] == "positive-infinity"
    assert obs["original_glcm_Idm"]["dataAbsentReason"]["coding"][0]["code"] == "error"
    assert obs["original_glcm_Id"]["valueQuantity"]["value"] == 0.75
    assert res.absent == 3
    assert any(i["tag"] == "original_glcm_Idm" for i in res.issues)
    assert "valueQuantity" not in obs["original_firstorder_Skewness"]


def test_ids_deterministic_and_settings_make_new_groups() -> None:
    feats = {"original_firstorder_Mean": 1.0}
    a, b = map_run(_run(feats)), map_run(_run(feats))
    assert [r["id"] for r in a.resources] == [r["id"] for r in b.resources]
    c = map_run(_run(feats, settings={"setting": {"binWidth": 10}}))
    ga = {r["id"] for r in a.resources if r["resourceType"] == "Observation"}
    gc = {r["id"] for r in c.resources if r["resourceType"] == "Observation"}
    assert not ga & gc
    bs = lambda m: [r["id"] for r in m.resources if r["resourceType"] == "BodyStructure"]  # noqa: E731
    assert bs(a) == bs(c), "the segment is the same BodyStructure whatever the settings"
    assert settings_hash({"a": 1, "b": 2}) == settings_hash({"b": 2, "a": 1})


def test_mr_units_are_unitless_with_note() -> None:
    res = map_run(_run({"original_firstorder_Mean": 300.0, "original_shape_VoxelVolume": 10.0}, modality="MR"))
    obs = _by_code(res.resources)
    assert obs["original_firstorder_Mean"]["valueQuantity"]["code"] == "1"
    assert "no calibrated unit" in obs["original_firstorder_Mean"]["note"][0]["text"]
    assert obs["original_shape_VoxelVolume"]["valueQuantity"]["code"] == "mm3"


def test_failed_segment_and_kaapana_all_zeros_become_absent() -> None:
    res = map_run(_run({"firstorder_Mean": 0, "shape_VoxelVolume": 0.0}, all_zero_is_failure=True))
    obs = _by_code(res.resources)
    assert all(o["dataAbsentReason"]["coding"][0]["code"] == "error" for o in obs.values())
    assert not any("valueQuantity" in o for o in obs.values())
    group = next(r for r in res.resources if "hasMember" in r)
    assert group["dataAbsentReason"]["coding"][0]["code"] == "error"
    empty = map_run(_run({}, error="empty segment (0 voxels)"))
    g = next(r for r in empty.resources if r["resourceType"] == "Observation")
    assert "empty segment" in g["dataAbsentReason"]["text"] and empty.features == 0
    validate_resource(g)


def test_components_layout() -> None:
    res = map_run(_run({"original_firstorder_Mean": 1.0, "original_firstorder_Median": float("nan")}),
                  layout="components")
    obs = [r for r in res.resources if r["resourceType"] == "Observation"]
    assert len(obs) == 1 and len(obs[0]["component"]) == 2
    validate_resource(obs[0])
    with pytest.raises(MappingError, match="layout"):
        map_run(_run({}), layout="rows")


def test_parse_kaapana_json_with_nan_strings_and_missing_masks(tmp_path: Path) -> None:
    text = ('{"img--1--GTV-1.nii.gz": {"shape_VoxelVolume": 837.0, "firstorder_Mean": NaN, "glcm_Idm": "abc"},'
            ' "img--2--Node.nii.gz": {"shape_VoxelVolume": 0, "firstorder_Mean": 0},'
            ' "img--3--Missing.nii.gz": null, "lung_left": {"firstorder_Mean": 12.5}}')
    segs, issues, fmt = parse_json(text, source="k.json")
    assert fmt == "kaapana-pyradiomics-json"
    assert [(s.segment_number, s.label) for s in segs] == [(1, "GTV-1"), (2, "Node"), (4, "lung_left")]
    assert any("Missing" in i["tag"] for i in issues) and any("lung_left" in i["tag"] for i in issues)
    assert math.isnan(segs[0].features["firstorder_Mean"])
    run = RadiomicsRun("RADMAP-2", "1.2.3", "1.2.3.9", segs, settings={"source": fmt})
    res = map_run(run)
    assert set(_by_code(res.resources, 1)) == {"original_shape_VoxelVolume", "original_firstorder_Mean",
                                               "original_glcm_Idm"}
    absent = [r for r in res.resources if r["resourceType"] == "Observation" and "dataAbsentReason" in r
              and "hasMember" not in r]
    assert len(absent) == 4  # NaN, "abc", and the all-zeros segment's 2 features
    with pytest.raises(MappingError, match="line 1"):
        parse_json("{not json", source="bad.json")
    with pytest.raises(MappingError, match="no mask"):
        parse_json('{"a": null}', source="empty.json")


def test_parse_pyradiomics_csv_and_json(tmp_path: Path) -> None:
    csv_text = ("Image,Mask,Label,diagnostics_Mask-original_VoxelNum,original_shape_VoxelVolume,"
                "original_firstorder_Mean\n"
                "ct.nrrd,seg--1--GTV.nrrd,1,837,837.5,-100.25\n"
                "ct.nrrd,seg--2--Node.nrrd,2,0,,\n")
    p = tmp_path / "r.csv"
    p.write_text(csv_text)
    segs, issues, fmt = parse_result_file(p)
    assert fmt == "pyradiomics-csv" and [s.segment_number for s in segs] == [1, 2]
    assert segs[0].features["original_firstorder_Mean"] == "-100.25" and segs[0].voxel_count == 837
    assert segs[1].error and "empty mask" in segs[1].error
    res = map_run(RadiomicsRun("RADMAP-3", "1.2.3", "1.2.3.8", segs))
    obs = _by_code(res.resources, 1)
    assert obs["original_firstorder_Mean"]["valueQuantity"]["value"] == -100.25
    assert all("dataAbsentReason" in o for o in _by_code(res.resources, 2).values())
    long_segs, _, fmt2 = parse_csv("name,value\noriginal_firstorder_Mean,3.5\n")
    assert fmt2 == "pyradiomics-csv-long" and long_segs[0].features == {"original_firstorder_Mean": "3.5"}
    j = tmp_path / "r.json"
    j.write_text(json.dumps([{"Image": "a", "Mask": "m", "Label": 1, "original_firstorder_Mean": 1.5}]))
    segs3, _, fmt3 = parse_result_file(j)
    assert fmt3 == "pyradiomics-json" and segs3[0].features == {"original_firstorder_Mean": 1.5}
    with pytest.raises(MappingError, match="row 2"):
        parse_csv("Image,original_firstorder_Mean\na\n")
    with pytest.raises(MappingError, match="feature columns"):
        parse_csv("a,b,c\n1,2,3\n")

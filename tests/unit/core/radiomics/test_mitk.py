"""MITK CLGlobalImageFeatures results (Kaapana ``radiomics-dcmseg``) → SegmentFeatures → FHIR.

The samples are synthetic, written in the shapes MITK's writers produce (see core/radiomics_results.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kaapana_fhir.core import codes
from kaapana_fhir.core.bundle import transaction
from kaapana_fhir.core.radiomics.mapping import CS_IBSI, map_run
from kaapana_fhir.core.radiomics.results import (
    CS_MITK,
    MITK_SOFTWARE,
    mitk_unit_kind,
    parse_mitk_csv,
    parse_mitk_json,
    parse_mitk_xml,
    parse_result_file,
)
from kaapana_fhir.core.validate import validate_bundle
from kaapana_fhir.exceptions import MappingError
from kaapana_fhir.flows.radiomics.flow import entries_for, run_from_result_file

MASK = "1.2.826.0.1.3680043.8.498.1--2--Liver Tumor.nrrd"
NAMES = ["First Order::Mean", "First Order::Biased Variance", "First Order::Skewness", "First Order::Minimum",
         "Volumetric Features::Volume (mesh based)", "Volumetric Features::Surface (mesh based)",
         "Co-occurenced Based Features::Joint Entropy"]
VALUES = ["-12.5", "400.25", "nan", "-101", "2145.5", "1024", "3.25"]


def _csv(header: bool, rows: int = 1, values: list[str] | None = None, mask: str = MASK) -> str:
    lines = []
    if header:
        lines.append(";".join(["SoftwareVersion", "Patient", "Image", "Segmentation", "SliceNumber", *NAMES,
                               "EndOfMeasurement"]) + ";")
    for _ in range(rows):
        lines.append(";".join(["abc123", "/data/img", "ct.nrrd", mask, "0", *(values or VALUES),
                               "EndOfMeasurement"]) + ";")
    return "\n".join(lines) + "\n"


def _xml(features: list[tuple[str, str, str, str]] | None = None, ns: str = "http://www.mitk.org/Phenotyping",
         mask: str = "/kaapana/mask/" + MASK) -> str:
    feats = features or [(n.split("::")[0], n.split("::")[1], "fo", v) for n, v in zip(NAMES, VALUES, strict=False)]
    body = "".join(f'<mp:feature name="{n}" version="1" class="{c}" setting="{s}">{v}</mp:feature>'
                   for c, n, s, v in feats)
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            f'<mp:measurement xmlns:mp="{ns}">'
            '<mp:measurementMethod><mp:name>CLGlobalImageFeatures</mp:name>'
            '<mp:organisation>German Cancer Research Center (DKFZ)</mp:organisation>'
            '<mp:version>Version: 1.23(mitk: 2018.04)</mp:version></mp:measurementMethod>'
            '<mp:image><mp:filePath>/kaapana/img/ct.nrrd</mp:filePath></mp:image>'
            f'<mp:mask><mp:filePath>{mask}</mp:filePath></mp:mask>'
            '<mp:generationDate>20240102</mp:generationDate><mp:generationTime>101112</mp:generationTime>'
            '<mp:pipelineUID>x</mp:pipelineUID>'
            '<mp:parameters><mp:parameter name="first-order">1</mp:parameter>'
            '<mp:parameter name="image">/kaapana/img/ct.nrrd</mp:parameter></mp:parameters>'
            f'<mp:features>{body}</mp:features><mp:featureSettings/></mp:measurement>')


def _check_segment(segs: list, fmt: str, expected_fmt: str) -> None:
    assert fmt == expected_fmt and len(segs) == 1
    seg = segs[0]
    assert (seg.segment_number, seg.label) == (2, "Liver Tumor")
    # same quantity as pyradiomics → pyradiomics key, MITK name kept as extra coding
    assert seg.features["original_firstorder_Mean"] == -12.5
    assert seg.features["original_firstorder_Minimum"] == -101
    assert seg.extra_codings["original_firstorder_Mean"][0] == {
        "system": CS_MITK, "code": "First Order::Mean", "display": "First Order Mean"}
    coded = {c.code: c for c in seg.coded_features}
    assert "First Order::Mean" not in coded and len(coded) == len(NAMES) - 2
    assert coded["First Order::Biased Variance"].unit_kind == "intensity2"
    assert math.isnan(coded["First Order::Skewness"].value) and coded["First Order::Skewness"].unit_kind == "1"
    assert coded["Volumetric Features::Volume (mesh based)"].unit_kind == "volume"
    assert coded["Volumetric Features::Surface (mesh based)"].unit_kind == "area"
    assert coded["Co-occurenced Based Features::Joint Entropy"].unit_kind is None  # unknown → no unit


def test_csv_with_header_row() -> None:
    segs, issues, fmt = parse_mitk_csv(_csv(header=True), source="liver_radiomics.csv")
    _check_segment(segs, fmt, "mitk-csv")
    assert segs[0].source["software"] == MITK_SOFTWARE and segs[0].source["version"] == "abc123"
    assert issues == []


def test_csv_without_header_is_refused_with_the_file_named() -> None:
    with pytest.raises(MappingError, match=r"nohead_radiomics\.csv: row 1 .*-head.*XML"):
        parse_mitk_csv(_csv(header=False), source="nohead_radiomics.csv")


def test_csv_appended_rerun_keeps_last_row_and_decimal_comma() -> None:
    vals = [v.replace(".", ",") for v in VALUES]
    vals[0] = "-7,5"
    text = _csv(header=True) + _csv(header=False, values=vals)  # -fl-head: 2nd run appends without header
    segs, issues, _ = parse_mitk_csv(text, source="r.csv")
    assert len(segs) == 1 and segs[0].features["original_firstorder_Mean"] == -7.5
    assert any("re-run" in i["rule"] for i in issues)


def test_csv_bad_rows() -> None:
    with pytest.raises(MappingError, match=r"b\.csv: row 2 has 3 cells"):
        parse_mitk_csv(_csv(header=True).splitlines()[0] + "\na;b;c;\n", source="b.csv")
    with pytest.raises(MappingError, match=r"h\.csv: header only"):
        parse_mitk_csv(_csv(header=True).splitlines()[0] + "\n", source="h.csv")


@pytest.mark.parametrize("ns", ["http://www.mitk.org/Phenotyping", "https://www.mitk.org/Phenotyping"])
def test_xml(ns: str) -> None:
    segs, issues, fmt = parse_mitk_xml(_xml(ns=ns), source="liver_radiomics.xml")
    _check_segment(segs, fmt, "mitk-xml")
    src = segs[0].source
    assert src["version"].startswith("Version: 1.23") and src["settings"] == {"first-order": "1"}
    assert issues == []


def test_xml_duplicate_feature_with_other_setting_gets_own_key() -> None:
    xml = _xml([("Co-occurenced Based Features", "Contrast", "co_range-1", "1.5"),
                ("Co-occurenced Based Features", "Contrast", "co_range-2", "2.5")])
    seg = parse_mitk_xml(xml, source="d.xml")[0][0]
    keys = sorted(c.key for c in seg.coded_features)
    assert keys == ["Co-occurenced Based Features::Contrast",
                    "Co-occurenced Based Features::co_range-2::Contrast"]
    assert {c.value for c in seg.coded_features} == {1.5, 2.5}


@pytest.mark.parametrize("text, pattern", [
    ("<mp:measurement xmlns:mp='http://www.mitk.org/Phenotyping'><mp:features>", "not well-formed XML"),
    ("<other/>", "root element 'other' is not mp:measurement"),
    ("<mp:measurement xmlns:mp='http://www.mitk.org/Phenotyping'/>", "no mp:features"),
    ("<mp:measurement xmlns:mp='http://www.mitk.org/Phenotyping'><mp:features/></mp:measurement>",
     "mp:features has no mp:feature"),
    ("", "empty file"),
    ("   \n", "empty file"),
])
def test_xml_malformed(text: str, pattern: str) -> None:
    with pytest.raises(MappingError, match=r"bad_radiomics\.xml: " + pattern):
        parse_mitk_xml(text, source="bad_radiomics.xml")


def test_xml_entity_attack_rejected() -> None:
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
            '<mp:measurement xmlns:mp="http://www.mitk.org/Phenotyping"><mp:features>'
            '<mp:feature name="Mean" class="First Order">&lol2;</mp:feature></mp:features></mp:measurement>')
    with pytest.raises(MappingError, match=r"evil_radiomics\.xml: XML has a DOCTYPE/ENTITY declaration"):
        parse_mitk_xml(bomb, source="evil_radiomics.xml")
    xxe = '<!doctype x [<!entity e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    with pytest.raises(MappingError, match="DOCTYPE/ENTITY"):
        parse_mitk_xml(xxe, source="evil2.xml")


def _xq(features: list[dict]) -> dict:
    """The xmltodict shape that ``xq`` prints for the XML."""
    return {"mp:measurement": {
        "@xmlns:mp": "http://www.mitk.org/Phenotyping",
        "mp:measurementMethod": {"mp:name": "CLGlobalImageFeatures", "mp:version": "Version: 1.23"},
        "mp:mask": {"mp:filePath": "/kaapana/mask/" + MASK},
        "mp:parameters": {"mp:parameter": {"@name": "first-order", "#text": "1"}},
        "mp:features": {"mp:feature": features if len(features) > 1 else features[0]}}}


def test_xq_json_including_appended_reruns_and_single_feature() -> None:
    feats = [{"@name": n.split("::")[1], "@class": n.split("::")[0], "@setting": "fo", "@version": "1", "#text": v}
             for n, v in zip(NAMES, VALUES, strict=False)]
    segs, issues, fmt = parse_mitk_json(json.dumps(_xq(feats)), source="liver_radiomics.json")
    _check_segment(segs, fmt, "mitk-json")
    assert issues == []
    one = json.dumps(_xq(feats[:1]))
    segs2, issues2, _ = parse_mitk_json(one + "\n" + one + "\n", source="twice.json")
    assert segs2[0].features["original_firstorder_Mean"] == -12.5
    assert any("appended" in i["rule"] for i in issues2)
    with pytest.raises(MappingError, match=r"x\.json: no 'mp:measurement'"):
        parse_mitk_json('{"a": 1}', source="x.json")
    with pytest.raises(MappingError, match=r"e\.json: empty file"):
        parse_mitk_json("", source="e.json")


def test_unit_kinds() -> None:
    assert mitk_unit_kind("First Order", "90th Percentile") == "intensity"
    assert mitk_unit_kind("Volumetric Features", "Surface to volume ratio (mesh based)") == "per_length"
    assert mitk_unit_kind("Volumetric Features", "PCA Major axis length") == "length"
    assert mitk_unit_kind("Volumetric Features", "Compactness 1 old (mesh based)") is None
    assert mitk_unit_kind("Grey Level Run Length", "Run Percentage") is None


@pytest.mark.parametrize("name, text", [
    ("Liver_radiomics.xml", _xml(mask="")),
    ("Liver_radiomics.csv", _csv(header=True, mask="")),
    ("Liver_radiomics.json", json.dumps(_xq([{"@name": "Mean", "@class": "First Order", "#text": "1"}]))),
    ("noext", _xml()),
])
def test_result_file_detection(tmp_path: Path, name: str, text: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    segs, _, fmt = parse_result_file(p)
    assert fmt.startswith("mitk-")
    assert segs[0].features["original_firstorder_Mean"] in (-12.5, 1.0)


def test_result_file_detection_keeps_pyradiomics_csv(tmp_path: Path) -> None:
    p = tmp_path / "py.csv"
    p.write_text("Image,Mask,Label,original_firstorder_Mean\nimg.nrrd,m.nrrd,1,3.5\n")
    assert parse_result_file(p)[2] == "pyradiomics-csv"
    e = tmp_path / "empty_radiomics.xml"
    e.write_text("")
    with pytest.raises(MappingError, match=r"empty_radiomics\.xml: empty file"):
        parse_result_file(e)


@pytest.mark.parametrize("suffix", ["xml", "csv"])
def test_end_to_end_bundle_validates(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"liver_radiomics.{suffix}"
    p.write_text(_xml() if suffix == "xml" else _csv(header=True))
    run, issues, fmt = run_from_result_file(p, study_uid="1.2.3", seg_series_uid="1.2.3.9", seg_sop_uid="1.2.3.9.1",
                                            patient_value="MITK-E2E-1", image_series_uid="1.2.3.4", modality="CT")
    assert fmt == f"mitk-{suffix}" and run.software == MITK_SOFTWARE
    entries, mapped = entries_for(run)
    bundle = transaction(entries, sort=False)
    validate_bundle(bundle)
    json.dumps(bundle, allow_nan=False)
    res = [e["resource"] for e in bundle["entry"]]
    dev = next(r for r in res if r["resourceType"] == "Device")
    assert dev["deviceName"][0]["name"] == MITK_SOFTWARE
    assert dev["version"][0]["value"] == ("abc123" if suffix == "csv" else "Version: 1.23(mitk: 2018.04)")
    obs = [r for r in res if r["resourceType"] == "Observation" and "hasMember" not in r]
    assert mapped.features == len(NAMES) == len(obs) and mapped.absent == 1
    by_code = {r["code"]["coding"][0]["code"]: r for r in obs}
    mean = by_code["firstorder_Mean"]
    assert mean["code"]["coding"][0]["system"] == codes.CS_PYRADIOMICS
    assert {"system": CS_MITK, "code": "First Order::Mean", "display": "First Order Mean"} in mean["code"]["coding"]
    assert any(c["system"] == CS_IBSI for c in mean["code"]["coding"])
    assert mean["valueQuantity"] == {"value": -12.5, "unit": "HU", "system": codes.UCUM, "code": "[hnsf'U]"}
    vol = by_code["Volumetric Features::Volume (mesh based)"]
    assert vol["code"]["coding"][0]["system"] == CS_MITK and vol["valueQuantity"]["code"] == "mm3"
    skew = by_code["First Order::Skewness"]
    assert skew["dataAbsentReason"]["coding"][0]["code"] == "not-a-number" and "valueQuantity" not in skew
    je = by_code["Co-occurenced Based Features::Joint Entropy"]
    assert je["valueQuantity"] == {"value": 3.25}  # unit unknown → none made up
    group = next(r for r in res if r["resourceType"] == "Observation" and "hasMember" in r)
    assert len(group["hasMember"]) == len(NAMES)
    assert group["method"]["text"].startswith(MITK_SOFTWARE)
    body = next(r for r in res if r["resourceType"] == "BodyStructure")
    assert body["identifier"][0]["value"] == "1.2.3.9.1/2" and body["description"] == "Liver Tumor"
    # components layout too
    comp_entries, comp = entries_for(run, layout="components")
    validate_bundle(transaction(comp_entries, sort=False))
    assert comp.features == len(NAMES)
    # ids are stable across a re-parse
    run2 = run_from_result_file(p, study_uid="1.2.3", seg_series_uid="1.2.3.9", seg_sop_uid="1.2.3.9.1",
                                patient_value="MITK-E2E-1", image_series_uid="1.2.3.4")[0]
    assert [e["resource"]["id"] for e in entries_for(run2)[0]] == [e["resource"]["id"] for e in entries]
    assert map_run(run).features == len(NAMES)
    assert not [i for i in issues if "position" in i["rule"]]

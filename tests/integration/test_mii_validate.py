"""Our resources against the MII KDS Modul Bildgebung profiles, validated by the real HAPI server.

The MII conformance resources (tests/data/mii, CC-BY-4.0, see NOTICE.md there) are loaded into the test HAPI;
every resource the DICOM mapping writes with the MII option (ImagingStudy of every modality the profiles cover,
with instance details; Device) and the radiomics Observations are ``$validate``d against the profiles they
claim. Rule under test: **no error from a profile rule**. Errors that come only from terminology the test server
cannot expand (SNOMED CT, the DICOM CID value sets of the fhir.dicom package, LOINC) are collected and written to
``mii_terminology_errors.json`` in the artifacts folder; they are listed, not failed.
"""

from __future__ import annotations

import glob
import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core.dicom.files import dataset_to_json
from kaapana_fhir.core.dicom.mapping import MappingOptions, SeriesInput, map_study
from tests.support.dicom_json import el, radiopharmaceutical, series_json

pytestmark = pytest.mark.integration

MII = Path(__file__).resolve().parents[1] / "data" / "mii"
#: messages of errors caused only by terminology the test server cannot expand or look up
TERMINOLOGY = re.compile(
    r"Unable to expand ValueSet|Failed to expand ValueSet|ValueSet .* not found|is ignored/not-present|"
    r"Unknown code|could not be validated|Unable to validate code|CodeSystem is unknown|"
    r"unknown code system|not found in the value set .* \(error message = Failed to expand|"
    r"None of the codings provided are in the value set|Unable to check whether the code is in the value set",
    re.IGNORECASE)


@pytest.fixture(scope="module")
def mii_fhir(fhir_url: str) -> FhirClient:
    fhir = FhirClient(fhir_url)
    for kind in ("CodeSystem", "ValueSet", "StructureDefinition"):
        for path in sorted(glob.glob(str(MII / f"{kind}-*.json"))):
            res = json.loads(Path(path).read_text(encoding="utf-8"))
            fhir.request("PUT", f"{kind}/{res['id']}", json_body=res)
    return fhir


def _errors(fhir: FhirClient, resource: dict[str, Any]) -> tuple[list[str], list[str]]:
    outcome = fhir.validate(resource)
    rule, term = [], []
    for i in outcome.get("issue", []):
        if i.get("severity") not in ("error", "fatal"):
            continue
        where = ",".join(i.get("expression") or i.get("location") or [])
        text = f"{resource['resourceType']}: {i.get('diagnostics', '')[:300]} @ {where}"
        (term if TERMINOLOGY.search(i.get("diagnostics", "")) else rule).append(text)
    return rule, term


def _instance(series: dict[str, Any], n: int, **attrs: Any) -> dict[str, Any]:
    inst = dict(series)
    inst.update(series_json(**attrs))
    inst.update(dict([el("SOPInstanceUID", f"{series['0020000E']['Value'][0]}.{n}"),
                      el("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"), el("InstanceNumber", str(n))]))
    return inst


def _modality_studies() -> list[list[SeriesInput]]:
    study = "1.2.826.0.1.3680043.8.498.18"
    out = []
    common = {"ReasonForTheRequestedProcedure": "Verdacht auf Karzinom", "ContrastBolusAgent": "Imeron 300",
              "SliceThickness": "1.5"}
    specs: list[dict[str, Any]] = [
        {"Modality": "CT", "KVP": "120", "XRayTubeCurrent": "80", "ExposureTime": "500", "Exposure": "40",
         "ConvolutionKernel": "B19f", "CTDIvol": 3.2, "Laterality": "R"},
        {"Modality": "MR", "MagneticFieldStrength": "3", "ScanningSequence": ["SE", "IR"], "SequenceVariant": ["SK"],
         "EchoTime": "12", "RepetitionTime": "5000", "InversionTime": "900", "FlipAngle": "90"},
        {"Modality": "PT", "Units": "BQML", "SeriesType": ["WHOLE BODY", "IMAGE"]},
        {"Modality": "NM"},
        {"Modality": "US", "TransducerType": "CURVED_LINEAR", "TransducerFrequency": 3500,
         "PulseRepetitionFrequency": 5860, "UltrasoundColorDataPresent": 1},
        {"Modality": "DX", "KVP": "70", "ViewPosition": "PA", "Exposure": "4", "BodyPartExamined": "CHEST"},
        {"Modality": "MG", "KVP": "28", "ViewPosition": "CC", "BodyPartExamined": "BREAST", "Laterality": "L"},
        {"Modality": "CR", "KVP": "60", "XRayTubeCurrent": "200", "ExposureTime": "20"},
    ]
    for k, spec in enumerate(specs, start=1):
        uid = f"{study}.{k}"
        attrs = series_json(study=uid, series=f"{uid}.1", **{**common, **spec})
        if spec["Modality"] in ("PT", "NM"):
            attrs["00540016"] = radiopharmaceutical("77004003", "SCT", "Fluorine-18")
        inst = _instance(attrs, 1, PixelSpacing=["0.5", "0.5"], ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
                         BurnedInAnnotation="NO")
        out.append([SeriesInput(attrs, [inst], 1)])
    return out


def _rt_headers() -> list[SeriesInput]:
    from tests.unit.core.dicom import rt_study

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        instances = rt_study.template_study(n_seg=1, n_sr=1)
    per: dict[str, SeriesInput] = {}
    for ds in instances:
        rec = dataset_to_json(ds)[0]
        s = per.setdefault(str(ds.SeriesInstanceUID), SeriesInput(rec, [], 0))
        s.instances.append(rec)
        s.instance_count = len(s.instances)
    return list(per.values())


def test_dicom_resources_validate_against_the_mii_profiles(mii_fhir: FhirClient, artifacts_dir: Path) -> None:
    options = MappingOptions(include_instances=True, endpoint_address="http://pacs.example/dicom-web",
                             timezone="Europe/Berlin")
    mappings = [map_study(series, options) for series in [*_modality_studies(), _rt_headers()]]
    rule_errors: list[str] = []
    term_errors: list[str] = []
    checked = 0
    for m in mappings:
        assert m.imaging_study["meta"]["profile"], "the MII option claims the profile"
        for r in [m.imaging_study, *m.devices]:
            rule, term = _errors(mii_fhir, r)
            rule_errors += rule
            term_errors += term
            checked += 1
    modalities = {s["modality"]["code"] for m in mappings for s in m.imaging_study["series"]}
    assert {"CT", "MR", "PT", "NM", "US", "DX", "MG", "CR", "SEG", "RTSTRUCT", "SR"} <= modalities
    (artifacts_dir / "mii_terminology_errors.json").write_text(
        json.dumps(sorted(set(term_errors)), indent=1), encoding="utf-8")
    assert checked >= 10
    assert rule_errors == []


def test_the_validation_catches_a_broken_profile_rule(mii_fhir: FhirClient) -> None:
    """The check can fail: a CT extension with a wrong unit code violates the profile."""
    m = map_study([SeriesInput(series_json(KVP="120"))], MappingOptions())
    ext = m.imaging_study["series"][0]["extension"][0]["extension"][0]
    ext["valueQuantity"]["code"] = "V"
    rule, _ = _errors(mii_fhir, m.imaging_study)
    assert any("KVP" in e or "kV" in e for e in rule), rule


def test_radiomics_observations_validate_against_the_mii_profiles(mii_fhir: FhirClient, artifacts_dir: Path) -> None:
    import math

    from kaapana_fhir.core.radiomics.mapping import RadiomicsRun, SegmentFeatures, map_run

    seg = SegmentFeatures(1, "GTV-1", {"original_shape_MeshVolume": 1234.5, "original_firstorder_Mean": -20.0,
                                       "original_glcm_Contrast": 0.5, "original_glcm_Idmn": math.nan},
                          property_type={"system": "http://snomed.info/sct", "code": "108369006",
                                         "display": "Neoplasm"})
    run = RadiomicsRun(patient_value="MII-RAD-1", study_uid="1.2.3", seg_sop_uid="1.2.3.9.1", seg_series_uid="1.2.3.9",
                       segments=[seg], image_series_uid="1.2.3.4", settings={"setting": {"binWidth": 25}},
                       pyradiomics_version="3.0.1", issued="2024-01-01T10:00:00+01:00")
    obs = [r for r in map_run(run).resources if r["resourceType"] == "Observation"]
    claimed = [o for o in obs if (o.get("meta") or {}).get("profile")]
    assert len(claimed) == 4  # the group and the three features with a value
    rule_errors, term_errors = [], []
    for o in claimed:
        rule, term = _errors(mii_fhir, o)
        rule_errors += rule
        term_errors += term
    (artifacts_dir / "mii_radiomics_terminology_errors.json").write_text(
        json.dumps(sorted(set(term_errors)), indent=1), encoding="utf-8")
    assert rule_errors == []

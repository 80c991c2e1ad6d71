"""Radiomics provenance (issue 18): SEG series/SOP UIDs on every Observation, derivedFrom the SEG's study,
settings in method, and the MII profiles (value[x] on the group, no partOf to an ImagingStudy)."""

from __future__ import annotations

import math

from kaapana_fhir.core.dicom import mii
from kaapana_fhir.core.radiomics.mapping import RadiomicsRun, SegmentFeatures, imaging_study_id, map_run
from kaapana_fhir.core.validate import validate_resource

SEG_SERIES, SEG_SOP, CT_SERIES = "1.2.3.9", "1.2.3.9.1", "1.2.3.4"
GTV = {"system": "http://snomed.info/sct", "code": "108369006", "display": "Neoplasm"}


def _run(**kw: object) -> RadiomicsRun:
    seg = SegmentFeatures(1, "GTV-1", {"original_shape_MeshVolume": 1234.5, "original_firstorder_Mean": -20.0,
                                       "original_glcm_Contrast": math.nan}, property_type=GTV)
    return RadiomicsRun(patient_value="PROV-1", study_uid="1.2.3", seg_sop_uid=SEG_SOP, seg_series_uid=SEG_SERIES,
                        segments=[seg], image_series_uid=CT_SERIES, settings={"setting": {"binWidth": 25}},
                        pyradiomics_version="3.0.1", **kw)  # type: ignore[arg-type]


def _obs(resources: list[dict]) -> tuple[dict, list[dict]]:
    obs = [r for r in resources if r["resourceType"] == "Observation"]
    group = next(o for o in obs if "hasMember" in o)
    return group, [o for o in obs if o is not group]


def test_every_observation_carries_the_seg_series_and_sop_uid() -> None:
    res = map_run(_run())
    group, feats = _obs(res.resources)
    for o in [group, *feats]:
        validate_resource(o)
        ext = {e["url"]: e["valueId"] for e in o["extension"]}
        assert ext == {mii.EXT_SERIES_UID: SEG_SERIES, mii.EXT_SOP_UID: SEG_SOP}
        assert o["derivedFrom"] == [{"reference": f"ImagingStudy/{imaging_study_id('1.2.3')}"}]
        assert "binWidth=25" in o["method"]["text"]


def test_mii_profiles_value_on_the_group_and_no_part_of() -> None:
    group, feats = _obs(map_run(_run()).resources)
    assert group["meta"]["profile"] == [mii.PROFILE_OBSERVATION]
    assert group["valueCodeableConcept"]["coding"] == [GTV]
    assert "partOf" not in group and all("partOf" not in f for f in feats)
    measured = [f for f in feats if "valueQuantity" in f]
    absent = [f for f in feats if "dataAbsentReason" in f]
    assert len(measured) == 2 and len(absent) == 1
    for f in measured:
        assert f["meta"]["profile"] == [mii.PROFILE_MEASUREMENT]
        sct = {"system": "http://snomed.info/sct", "code": "122869004", "display": "Measurement procedure (procedure)"}
        assert sct in [c for cat in f["category"] for c in cat["coding"]]
        assert {"unit", "system", "code"} <= f["valueQuantity"].keys()
    assert "profile" not in absent[0]["meta"]  # no value: cannot be a MII measurement


def test_core_profile_keeps_part_of_and_claims_nothing() -> None:
    group, feats = _obs(map_run(_run(), profile="core").resources)
    assert group["partOf"] == [{"reference": f"ImagingStudy/{imaging_study_id('1.2.3')}"}]
    assert "profile" not in group["meta"] and "value" not in "".join(group)


def test_seg_in_another_study_is_derived_from_both_and_unknown_series_is_an_issue() -> None:
    run = _run(seg_study_uid="1.2.7")
    run.seg_series_uid = None
    res = map_run(run)
    group, _ = _obs(res.resources)
    assert [d["reference"] for d in group["derivedFrom"]] == [f"ImagingStudy/{imaging_study_id('1.2.7')}",
                                                              f"ImagingStudy/{imaging_study_id('1.2.3')}"]
    assert [e["url"] for e in group["extension"]] == [mii.EXT_SOP_UID]
    assert any(i["tag"] == "(0020,000E)" for i in res.issues)

"""MII KDS Bildgebung output of the DICOM mapping (profile option, modality extensions, contrast, slice
thickness, reason, instance details, Device profile)."""

from __future__ import annotations

from typing import Any

from kaapana_fhir.core.dicom import mii
from kaapana_fhir.core.dicom.mapping import MappingOptions, Profile, SeriesInput, map_study
from kaapana_fhir.core.validate import validate_resource
from tests.support.dicom_json import el, radiopharmaceutical, series_json


def _map(options: MappingOptions | None = None, instances: list[dict[str, Any]] | None = None, **attrs: Any):
    m = map_study([SeriesInput(series_json(**attrs), instances or [])], options or MappingOptions())
    for r in m.resources():
        validate_resource(r)
    return m


def _ext(series: dict[str, Any], url: str) -> dict[str, Any]:
    return next(e for e in series.get("extension", []) if e["url"] == url)


def _sub(ext: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in ext["extension"]:
        value = next(v for k, v in e.items() if k.startswith("value"))
        out.setdefault(e["url"], []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


def test_mii_is_the_default_and_claims_the_profiles() -> None:
    m = _map(ReasonForTheRequestedProcedure="Verdacht auf Karzinom")
    assert MappingOptions().profile is Profile.MII
    assert m.imaging_study["meta"]["profile"] == [mii.PROFILE_IMAGING_STUDY]
    assert m.devices[0]["meta"]["profile"] == [mii.PROFILE_DEVICE]
    assert {"url": mii.EXT_REASON, "valueString": "Verdacht auf Karzinom"} in m.imaging_study["extension"]
    assert m.imaging_study["reasonCode"] == [{"text": "Verdacht auf Karzinom"}]


def test_core_profile_adds_nothing() -> None:
    m = _map(MappingOptions(profile="core"), KVP="120", ReasonForTheRequestedProcedure="x", SliceThickness="1.5")
    assert "profile" not in m.imaging_study["meta"]
    assert "extension" not in m.imaging_study and "extension" not in m.imaging_study["series"][0]
    assert "profile" not in m.devices[0]["meta"]


def test_ct_extension_with_ucum_codes() -> None:
    m = _map(KVP="120", XRayTubeCurrent="80", ExposureTime="500", Exposure="40", ConvolutionKernel="B19f",
             CTDIvol=3.25, SliceThickness="1.5", ContrastBolusAgent="Imeron")
    s = m.imaging_study["series"][0]
    ct = _sub(_ext(s, mii.EXT_CT))
    assert ct["KVP"] == {"value": 120, "unit": "kilovolt", "system": "http://unitsofmeasure.org", "code": "kV"}
    assert ct["CTDIvol"]["value"] == 3.25 and ct["CTDIvol"]["code"] == "mGy"
    assert ct["exposure"]["code"] == "mA.s" and ct["exposureTime"]["code"] == "ms"
    assert ct["xRayTubeCurrent"]["code"] == "mA" and ct["convolutionalKernel"] == "B19f"
    assert _ext(s, mii.EXT_SLICE_THICKNESS)["valueQuantity"]["value"] == 1.5
    assert _sub(_ext(s, mii.EXT_CONTRAST)) == {"contrastBolus": True}


def test_bad_numbers_are_skipped_with_an_issue() -> None:
    m = _map(KVP="abc", SliceThickness="-1")
    s = m.imaging_study["series"][0]
    assert all(e["url"] != mii.EXT_CT for e in s.get("extension", []))
    assert {"(0018,0060)", "(0018,0050)"} <= {i["tag"] for i in m.issues}


def test_mr_extension() -> None:
    m = _map(Modality="MR", MagneticFieldStrength="3", ScanningSequence=["SE", "IR", "XX"],
             SequenceVariant=["SK", "SP"], EchoTime="388", RepetitionTime="5000", InversionTime="900",
             FlipAngle="130")
    mr = _sub(_ext(m.imaging_study["series"][0], mii.EXT_MR))
    assert mr["magneticFieldStrength"]["code"] == "T"
    assert [c["coding"][0]["code"] for c in mr["scanningSequence"]] == ["SE", "IR"]
    assert [c["coding"][0]["code"] for c in mr["scanningSequenceVariant"]] == ["SK", "SP"]
    assert mr["flipAngle"]["code"] == "deg" and mr["echoTime"]["value"] == 388
    assert any(i["tag"] == "(0018,0020)" and i["value"] == "XX" for i in m.issues)


def test_pt_and_nm_extensions() -> None:
    attrs = series_json(Modality="PT", Units="BQML", SeriesType=["WHOLE BODY", "IMAGE"])
    attrs["00540016"] = radiopharmaceutical("C-111A1", "SRT", "^18^Fluorine")
    m = map_study([SeriesInput(attrs)])
    pt = _sub(_ext(m.imaging_study["series"][0], mii.EXT_PT))
    assert pt["radiopharmaceutical"] == {"text": "FDG"}
    assert pt["radionuclide"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert pt["radionuclideTotalDose"] == {"value": 350000000, "unit": "Becquerel",
                                           "system": "http://unitsofmeasure.org", "code": "Bq"}
    assert pt["units"]["coding"][0]["code"] == "Bq/mL"
    assert [c["code"] for c in pt["seriesType"]["coding"]] == ["IMAGE"]  # "WHOLE BODY" is not a code: issue
    attrs = series_json(Modality="NM")
    attrs["00540016"] = radiopharmaceutical("C-111A1", "SRT", "^18^Fluorine")
    nm = _sub(_ext(map_study([SeriesInput(attrs)]).imaging_study["series"][0], mii.EXT_NM))
    assert nm["radionuclideTotalDose"]["code"] == "MBq" and nm["radionuclideTotalDose"]["value"] == 350


def test_us_and_projection_radiography() -> None:
    m = _map(Modality="US", TransducerType="CURVED_LINEAR", TransducerFrequency=1670, PulseRepetitionFrequency=5860,
             UltrasoundColorDataPresent=0)
    us = _sub(_ext(m.imaging_study["series"][0], mii.EXT_US))
    assert us["transducerType"]["coding"][0]["code"] == "CURVED_LINEAR"
    assert us["transducerFrequency"]["code"] == "kHz" and us["ultrasoundColor"] is False
    for modality in ("DX", "CR", "MG"):
        m = _map(Modality=modality, KVP="70", ViewPosition="PA")
        xr = _sub(_ext(m.imaging_study["series"][0], mii.EXT_XR))
        assert xr["KVP"]["value"] == 70 and xr["viewPosition"] == {"text": "PA"}


def test_instance_details_when_instances_are_written() -> None:
    inst = series_json(PixelSpacing=["0.5", "0.7"], SliceThickness="2", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
                       BurnedInAnnotation="NO")
    inst.update(dict([el("SOPInstanceUID", "1.2.3.4"), el("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"),
                      el("InstanceNumber", "1")]))
    m = _map(MappingOptions(include_instances=True), instances=[inst])
    item = m.imaging_study["series"][0]["instance"][0]
    details = _sub(item["extension"][0])
    assert details["pixelSpacingX"]["value"] == 0.7 and details["pixelSpacingY"]["value"] == 0.5
    assert [c["code"] for c in details["imageType"]["coding"]] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert details["burnedInAnnotation"] is False

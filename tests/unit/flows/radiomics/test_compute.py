"""Radiomics compute from DICOM (no servers): demo data, geometry, correctness vs pyradiomics, bad-input corpus."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes as dcodes

from kaapana_fhir.cli.main import main as cli_main
from kaapana_fhir.core.validate import validate_bundle
from kaapana_fhir.dev.demo_data import demo_case, make_demo_dataset
from kaapana_fhir.dev.demo_dicom import ct_datasets
from kaapana_fhir.exceptions import ConfigError, MappingError
from kaapana_fhir.flows.radiomics import flow as flow
from kaapana_fhir.flows.radiomics.compute import read_dicom_dir

SEED = 7


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), n_patients=5, seed=SEED, patient_prefix="RADU")


def _direct(case_index: int, settings: dict) -> dict[int, dict]:
    from radiomics import featureextractor

    case = demo_case(case_index, SEED, "RADU")
    ex = featureextractor.RadiomicsFeatureExtractor(settings)
    return {n: ex.execute(case.image, m, label=1) for n, m in case.masks.items()}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def test_demo_dataset_small_deterministic_and_varied(demo: dict, tmp_path: Path) -> None:
    pats = demo["patients"]
    assert [p["patient_id"] for p in pats] == [f"RADU-{i:03d}" for i in range(1, 6)]
    root = Path(pats[0]["ct_dir"]).parents[1]
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert size < 1_000_000, f"demo set is {size} bytes"
    assert len(pats[1]["segments"]) == 2 and len(pats[2]["segments"]) == 2
    assert pats[2]["segments"][1]["slices"] == 1
    again = make_demo_dataset(tmp_path, n_patients=2, seed=SEED, patient_prefix="RADU")
    assert [p["seg_sop_uid"] for p in again["patients"]] == [p["seg_sop_uid"] for p in pats[:2]]
    assert (Path(again["patients"][0]["seg_file"]).read_bytes() == Path(pats[0]["seg_file"]).read_bytes())
    means = {float(sitk.GetArrayFromImage(demo_case(i, SEED).image).mean()) for i in range(5)}
    assert len(means) == 5, "patients must differ"


@pytest.mark.parametrize("index", range(5))
def test_features_equal_pyradiomics_on_same_volumes(demo: dict, index: int) -> None:
    settings = flow.load_settings()
    p = demo["patients"][index]
    res = flow.compute_from_files(p["ct_dir"], p["seg_file"], settings)
    direct = _direct(index, settings)
    assert {s.segment_number for s in res.run.segments} == set(direct)
    assert res.computed_image_types == ["original"] and res.skipped_image_types == []
    for seg in res.run.segments:
        assert len(seg.features) == 107
        for key, value in seg.features.items():
            assert _rel(float(value), float(direct[seg.segment_number][key])) <= 1e-6, key
        assert seg.voxel_count == next(s["voxels"] for s in p["segments"] if s["number"] == seg.segment_number)


def test_normal_minus_z_and_shuffled_files_give_correct_geometry(demo: dict) -> None:
    p = demo["patients"][4]
    cts = read_dicom_dir(p["ct_dir"])
    from kaapana_fhir.flows.radiomics.compute import build_volume

    vol = build_volume(cts)
    case = demo_case(4, SEED, "RADU")
    assert np.allclose(vol.image.GetDirection(), case.image.GetDirection())
    assert np.allclose(vol.image.GetOrigin(), case.image.GetOrigin(), atol=1e-3)
    assert np.array_equal(sitk.GetArrayFromImage(vol.image), sitk.GetArrayFromImage(case.image))
    file_order_positions = [float(ds.ImagePositionPatient[2]) for ds in cts]  # cts are in file-name order
    assert file_order_positions != sorted(file_order_positions, reverse=True), "files must be shuffled"
    assert vol.image.GetDirection()[8] == -1.0, "slice normal points to -z"


def test_cli_radiomics_out_bundle(demo: dict, tmp_path: Path) -> None:
    p = demo["patients"][1]
    out = tmp_path / "b.json"
    assert cli_main(["radiomics", "--ct", p["ct_dir"], "--seg", p["seg_file"], "--out", str(out)]) == 0
    b = json.loads(out.read_text())
    validate_bundle(b)
    types = [e["resource"]["resourceType"] for e in b["entry"]]
    assert types.count("BodyStructure") == 2 and types.count("Device") == 1
    assert types.count("Observation") == 2 * 107 + 2


def test_cli_radiomics_to_fhir_kaapana_json(tmp_path: Path) -> None:
    res = tmp_path / "k.json"
    res.write_text('{"ct--1--GTV-1.nii.gz": {"shape_VoxelVolume": 837.0, "firstorder_Mean": NaN}}')
    out = tmp_path / "b.json"
    assert cli_main(["radiomics-to-fhir", str(res), "--study", "1.2.3", "--seg-series", "1.2.3.4",
                     "--patient-id", "RADU-CLI", "--out", str(out)]) == 0
    b = json.loads(out.read_text())
    validate_bundle(b)
    absent = [e for e in b["entry"] if "dataAbsentReason" in e["resource"]]
    assert len(absent) == 1
    assert cli_main(["radiomics-to-fhir", str(tmp_path / "nope.json"), "--study", "1.2", "--seg-series", "1.3",
                     "--patient-id", "X", "--out", str(out)]) == 1


# ------------------------------------------------------------------ bad input corpus
def _seg_with(case_index: int, labelmap_fn, seg_type=hd.seg.SegmentationTypeValues.BINARY,  # noqa: ANN001
              n_segments: int = 1) -> tuple[list, pydicom.Dataset]:
    case = demo_case(case_index, SEED, "RADBAD")
    cts = ct_datasets(case, SEED)
    lab = labelmap_fn(sitk.GetArrayFromImage(case.masks[1]))
    descs = [hd.seg.SegmentDescription(n, f"S{n}", dcodes.SCT.Tissue, dcodes.SCT.Lung,
                                       hd.seg.SegmentAlgorithmTypeValues.MANUAL) for n in range(1, n_segments + 1)]
    seg = hd.seg.Segmentation(cts, lab, seg_type, descs, hd.UID(), 1, hd.UID(), 1, "t", "t", "1", "1")
    return cts, seg


def test_empty_segment_is_absent_not_zero() -> None:
    def two(m: np.ndarray) -> np.ndarray:
        return m.astype(np.uint8)  # segment 2 declared but empty
    cts, seg = _seg_with(0, two, n_segments=2)
    res = flow.compute(cts, seg, flow.load_settings())
    empty = next(s for s in res.run.segments if s.segment_number == 2)
    assert empty.voxel_count == 0 and empty.error and not empty.features
    assert any("empty segment" in i["rule"] for i in res.issues)
    entries, mapped = flow.entries_for(res.run)
    group2 = [e["resource"] for e in entries if "/2/" in e["resource"].get("identifier", [{}])[0].get("value", "")]
    assert len(group2) == 1 and group2[0]["dataAbsentReason"]["coding"][0]["code"] == "error"
    assert not any(e["resource"].get("valueQuantity", {}).get("value") == 0 for e in entries
                   if "/2/" in e["resource"].get("identifier", [{}])[0].get("value", ""))


def test_geometry_mismatch_seg_of_other_series() -> None:
    cts_a, seg_a = _seg_with(0, lambda m: m.astype(np.uint8))
    cts_b = ct_datasets(demo_case(3, SEED + 1, "RADBAD2"), SEED + 1)
    with pytest.raises(MappingError, match="FrameOfReferenceUID|not in image series"):
        flow.compute(cts_b, seg_a, flow.load_settings())
    for ds in cts_b:
        ds.FrameOfReferenceUID = cts_a[0].FrameOfReferenceUID
    with pytest.raises(MappingError, match=r"\(0008,1155\)"):
        flow.compute(cts_b, seg_a, flow.load_settings())
    small = [ds.copy() for ds in cts_a]
    for ds in small:
        ds.Rows, ds.Columns = 32, 32
        ds.PixelData = np.zeros((32, 32), np.int16).tobytes()
    with pytest.raises(MappingError, match=r"Rows/Columns"):
        flow.compute(small, seg_a, flow.load_settings())


def test_fractional_seg_rejected() -> None:
    cts, seg = _seg_with(0, lambda m: m.astype(np.float32) * 0.8, seg_type=hd.seg.SegmentationTypeValues.FRACTIONAL)
    with pytest.raises(MappingError, match=r"SegmentationType \(0062,0001\) FRACTIONAL"):
        flow.compute(cts, seg, flow.load_settings())


def test_rtstruct_rejected_clearly() -> None:
    from pydicom.data import get_testdata_file

    rt = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    cts, _ = _seg_with(0, lambda m: m.astype(np.uint8))
    with pytest.raises(MappingError, match="RTSTRUCT is not supported"):
        flow.compute(cts, rt, flow.load_settings())


def test_mr_image_units(tmp_path: Path) -> None:
    cts, seg = _seg_with(0, lambda m: m.astype(np.uint8))
    for ds in cts:
        ds.Modality = "MR"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    res = flow.compute(cts, seg, flow.load_settings())
    assert res.run.modality == "MR"
    entries, _ = flow.entries_for(res.run)
    mean = next(e["resource"] for e in entries
                if e["resource"].get("code", {}).get("coding", [{}])[0].get("code") == "firstorder_Mean")
    vol = next(e["resource"] for e in entries
               if e["resource"].get("code", {}).get("coding", [{}])[0].get("code") == "shape_MeshVolume")
    assert mean["valueQuantity"]["code"] == "1" and vol["valueQuantity"]["code"] == "mm3"


def test_referenced_series_missing_from_pacs() -> None:
    cts, seg = _seg_with(0, lambda m: m.astype(np.uint8))

    class Pacs:  # DICOMweb that holds only the SEG
        def find_series(self, uid: str) -> dict | None:
            return {"0020000D": {"Value": [seg.StudyInstanceUID]}} if uid == seg.SeriesInstanceUID else None

        def retrieve_series(self, study: str, series: str) -> list:
            return [seg] if series == seg.SeriesInstanceUID else []

    with pytest.raises(MappingError, match=r"referenced series .* \(0008,1115\).*not on the DICOMweb server"):
        flow.compute_from_dicomweb(Pacs(), seg.SeriesInstanceUID, flow.load_settings())
    with pytest.raises(MappingError, match="not found"):
        flow.compute_from_dicomweb(Pacs(), "1.2.999", flow.load_settings())


@pytest.mark.parametrize(("text", "match"), [
    ("setting:\n  binWidth: 25\n imageType: {}\n", r"line 3 column 2: .*\(rule: well-formed YAML\)"),
    ("- a\n- b\n", "must be a mapping"),
    ("settings:\n  binWidth: 25\n", "unknown top-level key"),
    ("setting:\n  binWidth: abc\n", "pyradiomics rejected the settings"),
    ("imageType: [Original]\n", "'imageType' must be a mapping"),
])
def test_malformed_settings_yaml(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        settings = flow.load_settings(p)
        flow.make_extractor(settings)


def test_requested_image_type_skipped_is_reported(demo: dict, caplog: pytest.LogCaptureFixture) -> None:
    settings = flow.load_settings(override={"imageType": {"Original": {}, "LoG": {}}})
    p = demo["patients"][0]
    res = flow.compute_from_files(p["ct_dir"], p["seg_file"], settings)
    assert res.skipped_image_types == ["LoG"] and res.computed_image_types == ["original"]
    assert "LoG was requested but produced no features" in caplog.text

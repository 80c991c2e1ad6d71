"""DICOM writers of the demo dataset: CT Image Storage per slice (pydicom) + SEG (highdicom).

Geometry (PS3.3 C.7.6.2): ImagePositionPatient (0020,0032) of slice k = origin + k * spacing_z * normal,
ImageOrientationPatient (0020,0037) = row + column direction, PixelSpacing (0028,0030) = [row spacing,
column spacing]. Pixels are int16 HU with RescaleSlope 1 / RescaleIntercept 0. UIDs are deterministic.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from kaapana_fhir.dev.demo_data import STUDY_DATE, det_uid

if TYPE_CHECKING:
    from kaapana_fhir.dev.demo_data import DemoCase


def _ds(v: float) -> str:
    for digits in (16, 14, 12, 10):
        s = format_number_as_ds(float(v)) if digits == 16 else f"{float(v):.{digits - 6}g}"
        if len(s) <= 16:
            return s
    return f"{float(v):.6g}"


def ct_datasets(case: DemoCase, seed: int = 0) -> list[Dataset]:
    """One CT dataset per slice, in index order of ``case.image``."""
    img = case.image
    arr = sitk.GetArrayFromImage(img).astype(np.int16)
    d = img.GetDirection()
    row, col, normal = np.array(d[0::3]), np.array(d[1::3]), np.array(d[2::3])
    sx, sy, sz = img.GetSpacing()
    origin = np.array(img.GetOrigin())
    pid = case.patient_id
    study, series, frame = det_uid(seed, pid, "study"), det_uid(seed, pid, "ct"), det_uid(seed, pid, "for")
    out = []
    for k in range(arr.shape[0]):
        ds = Dataset()
        sop = det_uid(seed, pid, "ct", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = pid.replace("-", "^"), pid, "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = STUDY_DATE
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", f"ACC{pid[-3:]}", ""
        ds.StudyDescription, ds.SeriesDescription = "Demo chest CT (pyradiomics lung1)", "CT crop"
        ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "CT", "kaapana-fhir demo", "CHEST"
        ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 1, k + 1, 1
        ds.PatientPosition, ds.PositionReferenceIndicator = "HFS", ""
        pos = origin + k * sz * normal
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.SliceLocation = _ds(float(np.dot(pos, normal)))
        ds.PixelSpacing, ds.SliceThickness = [_ds(sy), _ds(sx)], _ds(sz)
        ds.KVP = "120"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.PixelData = np.ascontiguousarray(arr[k]).tobytes()
        out.append(ds)
    return out


def seg_dataset(case: DemoCase, cts: list[Dataset], seed: int = 0) -> hd.seg.Segmentation:
    """A BINARY SEG of ``case.masks`` (segment number = mask key) referencing ``cts``; empty frames omitted."""
    pid = case.patient_id
    shape = sitk.GetArrayFromImage(case.image).shape
    labelmap = np.zeros(shape, dtype=np.uint8)
    descs = []
    for num in sorted(case.masks):
        m = sitk.GetArrayFromImage(case.masks[num]) > 0
        labelmap[m] = num
        is_tumour = num == 1
        descs.append(hd.seg.SegmentDescription(
            segment_number=num, segment_label=case.labels[num],
            segmented_property_category=(codes.SCT.MorphologicallyAbnormalStructure if is_tumour
                                         else codes.SCT.Tissue),
            segmented_property_type=codes.SCT.Neoplasm if is_tumour else codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=det_uid(seed, pid, "segment", num), tracking_id=case.labels[num],
            anatomic_regions=[codes.SCT.Lung]))
    seg = hd.seg.Segmentation(
        source_images=cts, pixel_array=labelmap, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs, series_instance_uid=det_uid(seed, pid, "seg-series"), series_number=100,
        sop_instance_uid=det_uid(seed, pid, "seg"), instance_number=1, manufacturer="kaapana-fhir demo",
        manufacturer_model_name="demo_data", software_versions="1", device_serial_number="1",
        content_label="TUMOUR", content_description="Demo tumour segmentation")
    for date_kw, time_kw in (("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime"),
                             ("InstanceCreationDate", "InstanceCreationTime")):
        setattr(seg, date_kw, STUDY_DATE)
        setattr(seg, time_kw, "120000")
    for item in getattr(seg, "ContributingEquipmentSequence", []):
        item.ContributionDateTime = f"{STUDY_DATE}120000"
    dim_uid = det_uid(seed, pid, "seg-dim")
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = dim_uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dim_uid
    return seg


def write_case(case: DemoCase, out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Write the CT files (shuffled InstanceNumber order when ``case.flip_normal``) and ``seg.dcm``."""
    ct_dir = out_dir / "ct"
    ct_dir.mkdir(parents=True, exist_ok=True)
    cts = ct_datasets(case, seed)
    order = list(range(len(cts)))
    if case.flip_normal:
        order = list(np.random.default_rng(seed + case.index).permutation(len(cts)))
    for file_no, k in enumerate(order):
        cts[k].InstanceNumber = file_no + 1
        pydicom.dcmwrite(ct_dir / f"CT{file_no + 1:03d}.dcm", cts[k], enforce_file_format=True)
    seg = seg_dataset(case, cts, seed)
    seg_file = out_dir / "seg.dcm"
    seg.save_as(seg_file)
    segments = []
    for num in sorted(case.masks):
        a = sitk.GetArrayFromImage(case.masks[num])
        segments.append({"number": num, "label": case.labels[num], "voxels": int((a > 0).sum()),
                         "slices": int((a.reshape(a.shape[0], -1) > 0).any(axis=1).sum())})
    return {"patient_id": case.patient_id, "index": case.index, "study_uid": cts[0].StudyInstanceUID,
            "ct_series_uid": cts[0].SeriesInstanceUID, "seg_series_uid": seg.SeriesInstanceUID,
            "seg_sop_uid": seg.SOPInstanceUID, "ct_dir": str(ct_dir), "seg_file": str(seg_file),
            "segments": segments}

"""Builders of DICOM JSON series records for the dicom-to-fhir unit tests and benchmarks."""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from kaapana_fhir.core.dicom.mapping import SeriesInput

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"


def el(keyword: str, value: Any) -> tuple[str, dict[str, Any]]:
    """``("StudyDate", "20200102")`` → ``("00080020", {"vr": "DA", "Value": ["20200102"]})``.
    ``value=None`` gives an element without ``Value`` (allowed in DICOM JSON)."""
    tag = tag_for_keyword(keyword)
    key = f"{tag:08X}"
    vr = dictionary_VR(tag)
    if value is None:
        return key, {"vr": vr}
    vals = value if isinstance(value, list) else [value]
    if vr == "PN":
        vals = [v if isinstance(v, dict) else {"Alphabetic": v} for v in vals]
    return key, {"vr": vr, "Value": vals}


def radiopharmaceutical(code_value: str, scheme: str, meaning: str) -> dict[str, Any]:
    """RadiopharmaceuticalInformationSequence (0054,0016) of an FDG PET: one item with dose, half-life and the
    radionuclide coded as ``code_value`` / ``scheme`` / ``meaning``."""
    nuclide = dict([el("CodeValue", code_value), el("CodingSchemeDesignator", scheme), el("CodeMeaning", meaning)])
    item = dict([el("Radiopharmaceutical", "FDG"), el("RadionuclideTotalDose", "350000000"),
                 el("RadionuclideHalfLife", "6586.2"), el("RadionuclideCodeSequence", [nuclide])])
    return {"vr": "SQ", "Value": [item]}


def series_json(study: str | None = STUDY, series: str = SERIES, *, drop: tuple[str, ...] = (),
                **attrs: Any) -> dict[str, Any]:
    """A QIDO-RS-like series record with sensible defaults; keyword arguments override/add elements."""
    base: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 192", "StudyInstanceUID": study, "SeriesInstanceUID": series,
        "PatientID": "PAT-1", "PatientName": "Doe^Jane", "PatientSex": "F", "PatientBirthDate": "19700101",
        "StudyDate": "20200102", "StudyTime": "100000", "TimezoneOffsetFromUTC": "+0100",
        "AccessionNumber": "ACC1", "StudyDescription": "CT chest", "Modality": "CT", "SeriesNumber": "2",
        "SeriesDescription": "axial", "NumberOfSeriesRelatedInstances": 3, "BodyPartExamined": "CHEST",
        "Manufacturer": "ACME", "ManufacturerModelName": "Scanner 9", "DeviceSerialNumber": "SN1",
    }
    base.update(attrs)
    out: dict[str, Any] = {}
    for k, v in base.items():
        if k in drop or (v is None and k == "StudyInstanceUID"):
            continue
        key, elem = el(k, v)
        out[key] = elem
    return out


def series_input(**kw: Any) -> SeriesInput:
    return SeriesInput(series_json(**kw))


def file_dataset(sop_class_uid: str, sop_instance_uid: str | None = None) -> Any:
    """An empty pydicom Dataset ready to be saved as a DICOM file (Part 10 file meta, Explicit VR Little Endian)
    with its SOP Class and a fresh (or the given) SOP Instance UID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid or generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, ds.file_meta.MediaStorageSOPInstanceUID
    return ds


def ct_series(study_uid: str, series_uid: str, patient_id: str, *, n: int = 3, series_number: int = 1,
              body_part: str = "CHEST", modality: str = "CT", tz: str | None = "+0100",
              patient_name: str = "Test^Patient", study_date: str = "20240305", size: int = 8) -> list[Any]:
    """A small synthetic CT series (``n`` slices of ``size``² int16 pixels) as pydicom Datasets, for STOW-RS."""
    import numpy as np
    from pydicom.uid import CTImageStorage

    out = []
    for i in range(n):
        ds = file_dataset(CTImageStorage)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = patient_id, patient_name, "F", "19600101"
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = study_date, "101500", study_date, "102000"
        if tz:
            ds.TimezoneOffsetFromUTC = tz
        ds.AccessionNumber, ds.StudyDescription, ds.StudyID = "A" + patient_id[-8:], "CT thorax", "1"
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, series_number, f"series {series_number}"
        ds.BodyPartExamined, ds.Laterality = body_part, ""
        ds.Manufacturer, ds.ManufacturerModelName, ds.DeviceSerialNumber = "KaapanaTest", "SynthCT", "SN-42"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = (np.arange(size * size, dtype=np.int16) + i).tobytes()
        out.append(ds)
    return out
